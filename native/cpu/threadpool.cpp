// threadpool.cpp — see threadpool.h.
#include "cpu/threadpool.h"

namespace re {

ThreadPool::ThreadPool(int nthreads) : nthreads_(nthreads < 1 ? 1 : nthreads) {
  for (int i = 1; i < nthreads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_start_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_tasks() {
  for (;;) {
    int i = next_.fetch_add(1);
    if (i >= n_) break;
    try {
      (*fn_)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      if (!error_) error_ = std::current_exception();
      next_.store(n_);  // skip the remaining tasks
    }
  }
}

// A worker takes part in a job only if it wakes while the job is still open. The caller never waits
// for a worker that has not joined: on a machine with more busy threads than cores a woken worker may
// not be scheduled for milliseconds, and waiting for it on every small op is what made spinning or
// acknowledging pools collapse 3–10× under load. After a job a worker spins briefly (a few µs, with
// pause) for the next one before it sleeps, which keeps back-to-back small ops cheap on a quiet machine.
void ThreadPool::worker_loop(int) {
  uint64_t seen = 0;
  for (;;) {
    for (int spin = 0; spin < 2048 && gen_.load(std::memory_order_acquire) == seen; ++spin) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
    }
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_start_.wait(lk, [&] { return stop_ || gen_.load(std::memory_order_relaxed) != seen; });
      if (stop_) return;
      seen = gen_.load(std::memory_order_relaxed);
      if (!open_) continue;  // the job finished before this worker woke: nothing to do
      ++joined_;
    }
    run_tasks();
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (--joined_ == 0 && !open_) cv_done_.notify_all();
    }
  }
}

void ThreadPool::parallel_for(int n, const std::function<void(int)>& fn, double work) {
  if (n <= 0) return;
  std::lock_guard<std::mutex> call(call_mu_);
  if (n == 1 || nthreads_ == 1 || work < 65536.0) {
    for (int i = 0; i < n; ++i) fn(i);
    return;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    fn_ = &fn;
    n_ = n;
    next_.store(0);
    error_ = nullptr;
    open_ = true;
    gen_.fetch_add(1, std::memory_order_release);
  }
  cv_start_.notify_all();
  run_tasks();
  std::exception_ptr err;
  {
    std::unique_lock<std::mutex> lk(mu_);
    open_ = false;  // no worker joins from here on; wait only for those running a task
    cv_done_.wait(lk, [&] { return joined_ == 0; });
    fn_ = nullptr;
    err = error_;
    error_ = nullptr;
  }
  if (err) std::rethrow_exception(err);
}

}  // namespace re

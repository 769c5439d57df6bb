// threadpool.h — a small persistent thread pool for the CPU backend: parallel_for(n, fn) runs
// fn(i) for i in [0, n) on all workers (the caller's thread takes part) and returns when all are done.
// Tasks are claimed dynamically; workers that wake late skip a finished job (see threadpool.cpp).
#pragma once
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace re {

class ThreadPool {
 public:
  explicit ThreadPool(int nthreads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return nthreads_; }
  // Runs fn(i) for every i in [0, n). Exceptions thrown by fn are rethrown here (the first one).
  // work: a rough count of scalar operations; below ~64K the call runs on the caller's thread
  // (waking workers costs more than it saves).
  void parallel_for(int n, const std::function<void(int)>& fn, double work = 1e18);

 private:
  void worker_loop(int id);
  void run_tasks();

  int nthreads_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_start_, cv_done_;
  const std::function<void(int)>* fn_ = nullptr;
  int n_ = 0;
  std::atomic<int> next_{0};
  int joined_ = 0;     // workers running the current job
  bool open_ = false;  // the current job still accepts workers
  std::atomic<uint64_t> gen_{0};
  bool stop_ = false;
  std::exception_ptr error_;
  std::mutex call_mu_;  // one parallel_for at a time
};

}  // namespace re

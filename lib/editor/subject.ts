// editor/subject.ts — does a text mention an edit's subject (EditRequest.subject): repair's subject routing
// (editor/router.ts) and the check that a request's or a record's subject is a span of its prompt.

/** A subject pattern per subject text: whole words, any case, any run of white space between words. */
const subjectPatterns = new Map<string, RegExp>();
/** Does `text` mention `subject` (case-insensitive, whole words, white space normalised)? */
export function mentions(text: string, subject: string): boolean {
  let re = subjectPatterns.get(subject);
  if (!re) {
    const words = subject.trim().split(/\s+/).map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
    re = new RegExp(`(?<![\\p{L}\\p{N}])${words.join('\\s+')}(?![\\p{L}\\p{N}])`, 'iu');
    if (subjectPatterns.size > 100000) subjectPatterns.clear();
    subjectPatterns.set(subject, re);
  }
  return re.test(text);
}

//! Text that comes from a guest (its log lines, refusal messages, decode
//! errors, trap backtraces naming its functions) is written into the
//! proxy's log only through [`sanitize`], so a guest cannot forge log
//! lines, hide text from a reader, or fill the disk with one line.

use std::fmt::Write;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// The longest guest text kept in one log line, in bytes; the rest is cut
/// and its length said.
pub const MAX_GUEST_TEXT: usize = 1024;

/// `text` as one safe log fragment: control characters (C0, DEL, C1),
/// line and paragraph separators (U+2028, U+2029), bidirectional
/// overrides and isolates (U+202A-U+202E, U+2066-U+2069) and directional
/// marks are escaped as `\u{..}` (newline as `\n`), and text past `max`
/// bytes is cut with a note of how much.
pub fn sanitize(text: &str, max: usize) -> String {
    let mut clean = String::with_capacity(text.len().min(max) + 16);
    for (at, c) in text.char_indices() {
        if clean.len() >= max {
            let _ = write!(clean, "... ({} more bytes)", text.len() - at);
            break;
        }
        match c {
            '\n' => clean.push_str("\\n"),
            '\r' => clean.push_str("\\r"),
            '\t' => clean.push_str("\\t"),
            '\\' => clean.push_str("\\\\"),
            c if needs_escape(c) => {
                let _ = write!(clean, "\\u{{{:x}}}", c as u32);
            }
            c => clean.push(c),
        }
    }
    clean
}

/// How many guest log lines one owner (a tenant) may write per second;
/// the rest are dropped and counted.
pub struct LogRate {
    per_second: u32,
    /// The second (since the process began) being counted.
    second: AtomicU64,
    lines: AtomicU32,
    /// Told of each dropped line.
    dropped: Box<dyn Fn() + Send + Sync>,
}

impl LogRate {
    /// At most `per_second` lines a second; `dropped` counts the others.
    pub fn new(per_second: u32, dropped: impl Fn() + Send + Sync + 'static) -> Self {
        LogRate {
            per_second,
            second: AtomicU64::new(0),
            lines: AtomicU32::new(0),
            dropped: Box::new(dropped),
        }
    }

    /// Whether one more line may be written now; a refusal is counted.
    pub fn admit(&self) -> bool {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        let now = ORIGIN.get_or_init(Instant::now).elapsed().as_secs() + 1;
        let second = self.second.load(Ordering::Relaxed);
        if second != now
            && self
                .second
                .compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.lines.store(0, Ordering::Relaxed);
        }
        if self.lines.fetch_add(1, Ordering::Relaxed) < self.per_second {
            return true;
        }
        (self.dropped)();
        false
    }
}

impl std::fmt::Debug for LogRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogRate")
            .field("per_second", &self.per_second)
            .finish_non_exhaustive()
    }
}

/// Characters a log reader or terminal would act on instead of showing.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{061c}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forged_lines_and_hidden_text_are_escaped() {
        assert_eq!(
            sanitize("ok\n[ERROR] forged\r\x1b[31m", 100),
            "ok\\n[ERROR] forged\\r\\u{1b}[31m"
        );
        assert_eq!(
            sanitize("a\u{2028}b\u{2029}c\u{202e}d\u{2066}e\u{85}f", 100),
            "a\\u{2028}b\\u{2029}c\\u{202e}d\\u{2066}e\\u{85}f"
        );
        assert_eq!(sanitize("back\\slash", 100), "back\\\\slash");
        assert_eq!(sanitize("héllo, 世界", 100), "héllo, 世界");
    }

    #[test]
    fn lines_past_the_rate_are_dropped_and_counted() {
        use std::sync::Arc;
        let dropped = Arc::new(AtomicU32::new(0));
        let counter = dropped.clone();
        let rate = LogRate::new(3, move || {
            counter.fetch_add(1, Ordering::Relaxed);
        });
        let admitted = (0..10).filter(|_| rate.admit()).count();
        // Three a second; a second boundary in the loop may admit three
        // more.
        assert!(admitted == 3 || admitted == 6, "{admitted}");
        assert_eq!(dropped.load(Ordering::Relaxed) as usize, 10 - admitted);
    }

    #[test]
    fn long_text_is_cut_and_says_so() {
        let long = "x".repeat(5000);
        let cut = sanitize(&long, 1024);
        assert!(cut.starts_with(&"x".repeat(1024)));
        assert!(cut.ends_with("... (3976 more bytes)"), "{cut}");
        // Escapes count toward the cap.
        let newlines = "\n".repeat(5000);
        assert!(sanitize(&newlines, 1024).len() < 1100);
    }
}

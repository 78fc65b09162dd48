//! Starting a stdio MCP server and guarding the line between it and the SDK.
//!
//! The child runs in its own process group, so stopping it stops what it started too (`npx`
//! starts `npm`, which starts `sh`, which starts `node`): a signal to the group reaches them all,
//! and a guard kills the group if the server is dropped without a clean stop. It gets a minimal
//! environment (PATH, HOME and the locale, plus what its configuration names), not the host's, and
//! its stderr goes to a per-server log file instead of the user's terminal.
//!
//! Its stdout passes through a pump before the SDK reads it. The pump drops lines that are not
//! JSON (servers that print banners or debug output to stdout) and logs them. A line over the
//! message limit is dropped too, but silently dropping it would leave the request waiting forever,
//! so the pump finds the request id in the line's first or last bytes (the response's top-level
//! `id`) and hands the SDK an error response for that id instead.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use process_wrap::tokio::{ChildWrapper, CommandWrap, ProcessGroup};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader, DuplexStream};
use tokio::process::{ChildStdin, ChildStdout};

/// Bytes kept from each end of an over-long line to find its id.
const EDGE: usize = 512;

/// Variables a stdio server inherits from Kestrel's environment when set.
const PASSED_THROUGH: &[&str] = &["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "TERM"];

/// A started stdio server: its pipes and the guard over its process group.
pub(crate) struct StdioServer {
    pub(crate) stdin: ChildStdin,
    pub(crate) stdout: DuplexStream,
    pub(crate) child: ChildGuard,
}

/// Owns a server's process group; dropping it kills the group.
pub(crate) struct ChildGuard {
    child: Option<Box<dyn ChildWrapper>>,
    pid: Option<u32>,
}

impl ChildGuard {
    /// The leader's process id (also the group id).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Stops the group: the caller has closed stdin already; wait a moment for a clean exit, then
    /// SIGTERM the group, then SIGKILL it.
    pub(crate) async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let grace = std::time::Duration::from_millis(500);
        if tokio::time::timeout(grace, child.wait()).await.is_err() {
            let _ = child.signal(libc::SIGTERM);
            if tokio::time::timeout(grace * 2, child.wait()).await.is_err() {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(grace * 4, child.wait()).await;
            }
        }
        // The leader may have exited on its own while others in its group live on.
        let _ = child.start_kill();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            // Synchronous SIGKILL to the whole group: no runtime is needed, so this also works
            // while the process is shutting down.
            let _ = child.start_kill();
        }
    }
}

/// Starts `command` in its own process group with a minimal environment.
pub(crate) fn spawn(
    command: &OsStr,
    args: &[OsString],
    env: &BTreeMap<String, String>,
    cwd: Option<&Path>,
    stderr_log: &Path,
    max_message_bytes: usize,
) -> std::io::Result<StdioServer> {
    let log = File::create(stderr_log)?;
    let mut wrapped = CommandWrap::with_new(command, |c| {
        c.args(args).env_clear();
        for key in PASSED_THROUGH {
            if let Some(v) = std::env::var_os(key) {
                c.env(key, v);
            }
        }
        c.envs(env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        if let Some(dir) = cwd {
            c.current_dir(dir);
        }
    });
    wrapped.wrap(ProcessGroup::leader());
    let mut child = wrapped.spawn()?;
    let pid = child.id();
    let (Some(stdin), Some(stdout)) = (child.stdin().take(), child.stdout().take()) else {
        return Err(std::io::Error::other("the child's pipes were not opened"));
    };
    let (to_sdk, from_pump) = tokio::io::duplex(1 << 16);
    let log = ServerLog::open(stderr_log)?;
    tokio::spawn(pump(stdout, to_sdk, max_message_bytes, log));
    Ok(StdioServer {
        stdin,
        stdout: from_pump,
        child: ChildGuard {
            child: Some(child),
            pid,
        },
    })
}

/// Appends Kestrel's own notes about a server to its stderr log.
#[derive(Clone)]
struct ServerLog(Arc<Mutex<File>>);

impl ServerLog {
    fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(Self(Arc::new(Mutex::new(file))))
    }

    fn note(&self, message: &str) {
        if let Ok(mut f) = self.0.lock() {
            let _ = writeln!(f, "[kestrel] {message}");
        }
    }
}

/// Copies JSON lines from the server to the SDK; see the module comment.
async fn pump(stdout: ChildStdout, mut to_sdk: DuplexStream, limit: usize, log: ServerLog) {
    let mut reader = BufReader::with_capacity(1 << 16, stdout);
    // Only the first lines of junk are quoted; a run of junk that went partly unquoted is
    // summed up before the next message, so the log is complete as soon as that message is.
    let mut quoted = 0u32;
    let mut junk_run = 0u64;
    let mut run_unquoted = false;
    let note_run = |run: &mut u64, unquoted: &mut bool| {
        if *unquoted {
            log.note(&format!("ignored {run} non-JSON lines on stdout in a row"));
        }
        *run = 0;
        *unquoted = false;
    };
    loop {
        let line = match read_line(&mut reader, limit).await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                log.note(&format!("stopped reading stdout: {e}"));
                break;
            }
        };
        let forward = match line {
            Line::Whole(bytes) => {
                let trimmed = bytes.trim_ascii();
                if trimmed.is_empty() {
                    continue;
                }
                if !matches!(trimmed[0], b'{' | b'[') {
                    junk_run += 1;
                    if quoted < 20 {
                        quoted += 1;
                        let shown = String::from_utf8_lossy(&trimmed[..trimmed.len().min(200)]);
                        log.note(&format!("ignored a non-JSON line on stdout: {shown}"));
                    } else {
                        run_unquoted = true;
                    }
                    continue;
                }
                bytes
            }
            Line::TooLong { head, tail, len } => {
                let message = format!(
                    "the server sent a {len}-byte message, over the {limit}-byte limit; it was dropped"
                );
                log.note(&message);
                match find_top_level_id(&head, &tail) {
                    Some(id) => json!({
                        "jsonrpc": "2.0",
                        "id": id,
                        "error": {"code": -32603, "message": message},
                    })
                    .to_string()
                    .into_bytes(),
                    None => continue,
                }
            }
        };
        note_run(&mut junk_run, &mut run_unquoted);
        if to_sdk.write_all(&forward).await.is_err() || to_sdk.write_all(b"\n").await.is_err() {
            break;
        }
    }
    note_run(&mut junk_run, &mut run_unquoted);
    let _ = to_sdk.shutdown().await;
}

enum Line {
    Whole(Vec<u8>),
    TooLong {
        head: Vec<u8>,
        tail: Vec<u8>,
        len: usize,
    },
}

/// Reads one line, keeping at most `limit` bytes of it (only its edges once it is longer).
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    limit: usize,
) -> std::io::Result<Option<Line>> {
    let mut line = Vec::new();
    let mut tail: Vec<u8> = Vec::new();
    let mut len = 0usize;
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            if len == 0 {
                return Ok(None);
            }
            break;
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        len += chunk.len();
        if too_long {
            tail.extend_from_slice(chunk);
            if tail.len() > EDGE {
                tail.drain(..tail.len() - EDGE);
            }
        } else {
            line.extend_from_slice(chunk);
            if line.len() > limit {
                too_long = true;
                tail = line[line.len().saturating_sub(EDGE)..].to_vec();
                line.truncate(EDGE);
            }
        }
        let used = chunk.len() + usize::from(done);
        reader.consume(used);
        if done {
            break;
        }
    }
    Ok(Some(if too_long {
        Line::TooLong {
            head: line,
            tail,
            len,
        }
    } else {
        Line::Whole(line)
    }))
}

/// The `id` of a JSON-RPC message known only by its first and last bytes: the `"id"` key of the
/// top-level object, found in the head by tracking nesting from the start, or in the tail as the
/// last `"id"` key after which the text closes exactly one object.
fn find_top_level_id(head: &[u8], tail: &[u8]) -> Option<Value> {
    let mut nesting = Nesting::default();
    for (i, &b) in head.iter().enumerate() {
        if !nesting.in_string
            && b == b'"'
            && nesting.depth == 1
            && head[i..].starts_with(b"\"id\"")
            && let Some((id, _)) = id_value_after_key(&head[i + 4..])
        {
            return Some(id);
        }
        nesting.feed(b);
    }
    let mut search_end = tail.len();
    while let Some(pos) = find_last(&tail[..search_end], b"\"id\"") {
        if (pos == 0 || tail[pos - 1] != b'\\')
            && let Some((id, rest)) = id_value_after_key(&tail[pos + 4..])
            && closes_exactly_one_object(rest)
        {
            return Some(id);
        }
        search_end = pos;
    }
    None
}

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// After a `"id"` key: `: <number or string>`; returns the value and the bytes after it.
fn id_value_after_key(bytes: &[u8]) -> Option<(Value, &[u8])> {
    let text = std::str::from_utf8(bytes)
        .or_else(|e| std::str::from_utf8(&bytes[..e.valid_up_to()]))
        .ok()?;
    let rest = text.trim_start().strip_prefix(':')?.trim_start();
    let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
    let value = stream.next()?.ok()?;
    let consumed = stream.byte_offset();
    if !(value.is_number() || value.is_string()) {
        return None;
    }
    let offset = bytes.len() - text.len() + (text.len() - rest.len()) + consumed;
    Some((value, &bytes[offset..]))
}

/// Whether `rest` (outside any string) closes exactly one more object than it opens.
fn closes_exactly_one_object(rest: &[u8]) -> bool {
    let mut nesting = Nesting::default();
    rest.iter().for_each(|&b| nesting.feed(b));
    nesting.depth == -1 && !nesting.in_string
}

/// JSON nesting depth over a byte stream, strings (and their escapes) skipped.
#[derive(Default)]
struct Nesting {
    depth: i32,
    in_string: bool,
    escaped: bool,
}

impl Nesting {
    fn feed(&mut self, b: u8) {
        if self.in_string {
            match (self.escaped, b) {
                (true, _) => self.escaped = false,
                (false, b'\\') => self.escaped = true,
                (false, b'"') => self.in_string = false,
                _ => {}
            }
            return;
        }
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => self.depth -= 1,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edges(line: &str) -> (Vec<u8>, Vec<u8>) {
        let b = line.as_bytes();
        (
            b[..b.len().min(40)].to_vec(),
            b[b.len().saturating_sub(40)..].to_vec(),
        )
    }

    #[test]
    fn finds_the_id_at_either_end() {
        let big = "x".repeat(1000);
        let front = format!(
            r#"{{"jsonrpc":"2.0","id":7,"result":{{"content":[{{"type":"text","text":"{big}"}}]}}}}"#
        );
        let (h, t) = edges(&front);
        assert_eq!(find_top_level_id(&h, &t), Some(json!(7)));
        // TypeScript servers put the id last.
        let back = format!(
            r#"{{"result":{{"content":[{{"type":"text","text":"{big}"}}]}},"jsonrpc":"2.0","id":"req-9"}}"#
        );
        let (h, t) = edges(&back);
        assert_eq!(find_top_level_id(&h, &t), Some(json!("req-9")));
    }

    #[test]
    fn nested_ids_are_not_the_message_id() {
        let big = "x".repeat(1000);
        let nested = format!(
            r#"{{"result":{{"structuredContent":{{"id":3,"t":"{big}","row":{{"id":4}}}}}}}}"#
        );
        let (h, t) = edges(&nested);
        assert_eq!(find_top_level_id(&h, &t), None);
        let escaped = format!(r#"{{"result":{{"text":"{big} \"id\":5}}"}}}}"#);
        let (h, t) = edges(&escaped);
        assert_eq!(find_top_level_id(&h, &t), None);
    }

    #[tokio::test]
    async fn long_lines_keep_only_their_edges() {
        let input = format!("short\n{}\nlast", "y".repeat(5000));
        let mut reader = BufReader::with_capacity(64, input.as_bytes());
        let Some(Line::Whole(a)) = read_line(&mut reader, 100).await.expect("io") else {
            panic!("first line is short")
        };
        assert_eq!(a, b"short");
        let Some(Line::TooLong { head, tail, len }) =
            read_line(&mut reader, 100).await.expect("io")
        else {
            panic!("second line is too long")
        };
        assert_eq!((tail.len(), len), (EDGE, 5000));
        assert!(!head.is_empty() && head.len() <= EDGE && head.iter().all(|&b| b == b'y'));
        let Some(Line::Whole(c)) = read_line(&mut reader, 100).await.expect("io") else {
            panic!("a last line without newline still counts")
        };
        assert_eq!(c, b"last");
        assert!(read_line(&mut reader, 100).await.expect("io").is_none());
    }
}

//! Incremental server-sent-events parsing of an upstream stream: events may be split anywhere
//! across chunks, lines may end in CRLF, and UTF-8 characters may be split between chunks.

/// One complete event.
#[derive(Debug, Clone, PartialEq)]
pub struct SseEvent {
    /// The event's bytes exactly as received, terminator included, for forwarding.
    pub raw: Vec<u8>,
    /// Its `data:` lines joined with `\n`.
    pub data: String,
}

/// Splits a byte stream into events.
#[derive(Default)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Where the current (incomplete) event starts in `buf`.
    scanned: usize,
}

impl SseParser {
    /// Feeds bytes; returns the events they complete.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        let mut line_start = self.scanned;
        let mut event_start = 0;
        let mut i = self.scanned;
        while let Some(pos) = self.buf[i..].iter().position(|&b| b == b'\n') {
            let end = i + pos;
            let line = &self.buf[line_start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                let raw = self.buf[event_start..=end].to_vec();
                let data = data_of(&raw);
                if !raw.iter().all(|b| b.is_ascii_whitespace()) {
                    events.push(SseEvent { raw, data });
                } else if let Some(last) = events.last_mut() {
                    last.raw.extend_from_slice(&raw);
                }
                event_start = end + 1;
            }
            line_start = end + 1;
            i = end + 1;
        }
        self.buf.drain(..event_start);
        self.scanned = line_start - event_start;
        events
    }

    /// Bytes of an unterminated last event, when the stream ends.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if self.buf.iter().all(|b| b.is_ascii_whitespace()) {
            return None;
        }
        let raw = std::mem::take(&mut self.buf);
        self.scanned = 0;
        let data = data_of(&raw);
        Some(SseEvent { raw, data })
    }
}

fn data_of(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d).trim_end_matches('\r'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere_with_crlf_and_split_utf8() {
        let stream = "data: {\"a\":\"é😀\"}\r\n\r\ndata: x\n\ndata: [DONE]\n\n".as_bytes();
        for split in 1..stream.len() {
            let mut p = SseParser::default();
            let mut events = p.push(&stream[..split]);
            events.extend(p.push(&stream[split..]));
            let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
            assert_eq!(data, ["{\"a\":\"é😀\"}", "x", "[DONE]"], "split at {split}");
            let raw: Vec<u8> = events.iter().flat_map(|e| e.raw.clone()).collect();
            assert_eq!(raw, stream);
            assert!(p.finish().is_none());
        }
        let mut p = SseParser::default();
        for b in stream {
            p.push(&[*b]);
        }
    }

    #[test]
    fn an_unterminated_tail_is_returned_at_the_end() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: partial").is_empty());
        assert_eq!(p.finish().unwrap().data, "partial");
    }
}

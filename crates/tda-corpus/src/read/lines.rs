//! Bounded line reading for the line-oriented formats (jsonl, text in line mode).

use std::io::BufRead;

/// Read one line into `buf` without its terminator, buffering at most `max` bytes.
/// Returns (bytes consumed including terminator, overflowed, terminator length).
pub(super) fn read_bounded_line(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<(u64, bool, u64)>> {
    buf.clear();
    let mut consumed = 0u64;
    let mut overflow = false;
    let mut saw_newline = false;
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            break;
        }
        let (chunk, used, nl) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..i], i + 1, true),
            None => (avail, avail.len(), false),
        };
        if !overflow {
            if buf.len() + chunk.len() > max {
                overflow = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        r.consume(used);
        consumed += used as u64;
        if nl {
            saw_newline = true;
            break;
        }
    }
    if consumed == 0 {
        return Ok(None);
    }
    let mut term = 0;
    if saw_newline {
        term = 1;
        if buf.last() == Some(&b'\r') {
            buf.pop();
            term = 2;
        }
    }
    Ok(Some((consumed, overflow, term)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    #[test]
    fn bounded_line_reader() {
        let data = b"ab\r\ncdefgh\nij";
        let mut r = BufReader::with_capacity(2, &data[..]);
        let mut buf = Vec::new();
        assert_eq!(
            read_bounded_line(&mut r, &mut buf, 4).unwrap(),
            Some((4, false, 2))
        );
        assert_eq!(buf, b"ab");
        assert_eq!(
            read_bounded_line(&mut r, &mut buf, 4).unwrap(),
            Some((7, true, 1))
        );
        assert_eq!(
            read_bounded_line(&mut r, &mut buf, 4).unwrap(),
            Some((2, false, 0))
        );
        assert_eq!(buf, b"ij");
        assert_eq!(read_bounded_line(&mut r, &mut buf, 4).unwrap(), None);
    }
}

//! The memcached meta protocol: encoding requests and parsing responses.
//!
//! The parser is incremental (it says "need more bytes" instead of blocking),
//! bounded (a line longer than [`MAX_LINE`] or a value larger than the
//! caller's limit is an error, so a misbehaving server cannot make us buffer
//! forever), and total: any byte sequence yields a response, "incomplete" or
//! an error, never a panic. A fuzz target (`fuzz/`) and a randomized test
//! check that.

use bytes::Bytes;

/// The longest response line accepted (memcached's are under 300 bytes).
pub const MAX_LINE: usize = 8192;

/// Flags a response may carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// `O`: the opaque token the request carried.
    pub opaque: Option<u32>,
    /// `t`: remaining TTL in seconds, -1 for none.
    pub ttl: Option<i64>,
    /// `c`: the CAS value.
    pub cas: Option<u64>,
    /// `W`: this client won the right to recompute (lease).
    pub win: bool,
    /// `X`: the item is stale.
    pub stale: bool,
    /// `Z`: a winning token was already handed out.
    pub already_won: bool,
}

/// One parsed response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// `HD`: success without a value.
    Hd(Flags),
    /// `VA`: a value.
    Va(Bytes, Flags),
    /// `EN`: miss.
    En,
    /// `NF`: not found.
    Nf,
    /// `NS`: not stored.
    Ns,
    /// `EX`: CAS mismatch.
    Ex,
    /// `MN`: end of a pipeline (answer to `mn`).
    Mn,
    /// `CLIENT_ERROR …`.
    ClientError(String),
    /// `SERVER_ERROR …`.
    ServerError(String),
    /// `ERROR`.
    Error(String),
}

/// A response that violates the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoError {
    /// A line longer than [`MAX_LINE`] without a terminator.
    LineTooLong,
    /// A value larger than the caller accepts.
    ValueTooLarge(usize),
    /// Anything else that is not memcached's meta protocol.
    Garbage(String),
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProtoError::LineTooLong => write!(f, "response line longer than {MAX_LINE} bytes"),
            ProtoError::ValueTooLarge(n) => {
                write!(f, "response value of {n} bytes is larger than allowed")
            }
            ProtoError::Garbage(s) => write!(f, "not a memcached meta response: {s}"),
        }
    }
}

impl std::error::Error for ProtoError {}

fn garbage(line: &[u8]) -> ProtoError {
    let shown: String = String::from_utf8_lossy(&line[..line.len().min(64)]).into_owned();
    ProtoError::Garbage(shown)
}

/// Parses one response from the front of `buf`. `Ok(None)`: more bytes are
/// needed. `Ok(Some((response, consumed)))` otherwise.
pub fn parse(buf: &[u8], max_value: usize) -> Result<Option<(Response, usize)>, ProtoError> {
    let Some(nl) = buf.iter().take(MAX_LINE).position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_LINE {
            Err(ProtoError::LineTooLong)
        } else {
            Ok(None)
        };
    };
    if nl == 0 || buf[nl - 1] != b'\r' {
        return Err(garbage(&buf[..nl]));
    }
    let line = &buf[..nl - 1];
    let after_line = nl + 1;
    let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let code = words.next().ok_or_else(|| garbage(line))?;
    let rest_text = || {
        let start = code.len().min(line.len());
        String::from_utf8_lossy(&line[start..]).trim().to_owned()
    };
    let response = match code {
        b"HD" => Response::Hd(parse_flags(words)?),
        b"EN" => Response::En,
        b"NF" => Response::Nf,
        b"NS" => Response::Ns,
        b"EX" => Response::Ex,
        b"MN" => Response::Mn,
        b"CLIENT_ERROR" => Response::ClientError(rest_text()),
        b"SERVER_ERROR" => Response::ServerError(rest_text()),
        b"ERROR" => Response::Error(rest_text()),
        b"VA" => {
            let size_word = words.next().ok_or_else(|| garbage(line))?;
            let size = parse_u64(size_word).ok_or_else(|| garbage(line))?;
            let size = usize::try_from(size).map_err(|_| ProtoError::ValueTooLarge(usize::MAX))?;
            if size > max_value {
                return Err(ProtoError::ValueTooLarge(size));
            }
            let flags = parse_flags(words)?;
            let end = after_line
                .checked_add(size)
                .and_then(|n| n.checked_add(2))
                .ok_or(ProtoError::ValueTooLarge(size))?;
            if buf.len() < end {
                return Ok(None);
            }
            if &buf[end - 2..end] != b"\r\n" {
                return Err(ProtoError::Garbage("value not followed by \\r\\n".into()));
            }
            let data = Bytes::copy_from_slice(&buf[after_line..end - 2]);
            return Ok(Some((Response::Va(data, flags), end)));
        }
        _ => return Err(garbage(line)),
    };
    Ok(Some((response, after_line)))
}

fn parse_u64(w: &[u8]) -> Option<u64> {
    if w.is_empty() || w.len() > 20 || !w.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(w).ok()?.parse().ok()
}

fn parse_i64(w: &[u8]) -> Option<i64> {
    let digits = w.strip_prefix(b"-").unwrap_or(w);
    parse_u64(digits)?;
    std::str::from_utf8(w).ok()?.parse().ok()
}

fn parse_flags<'a>(words: impl Iterator<Item = &'a [u8]>) -> Result<Flags, ProtoError> {
    let mut f = Flags::default();
    for w in words {
        let (tag, val) = (w[0], &w[1..]);
        let bad = || garbage(w);
        match tag {
            b'O' => {
                f.opaque = Some(
                    parse_u64(val)
                        .and_then(|v| u32::try_from(v).ok())
                        .ok_or_else(bad)?,
                )
            }
            b't' => f.ttl = Some(parse_i64(val).ok_or_else(bad)?),
            b'c' => f.cas = Some(parse_u64(val).ok_or_else(bad)?),
            b'W' => f.win = true,
            b'X' => f.stale = true,
            b'Z' => f.already_won = true,
            // Flags we do not request (k, s, f, h, l, …) are ignored.
            _ => {}
        }
    }
    Ok(f)
}

/// Builds request lines into one buffer, for pipelining.
#[derive(Debug, Default)]
pub struct Requests {
    buf: Vec<u8>,
}

impl Requests {
    /// An empty batch.
    pub fn new() -> Self {
        Requests {
            buf: Vec::with_capacity(128),
        }
    }

    /// The bytes to write.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The bytes to write, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn line(&mut self, parts: &[&[u8]]) {
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                self.buf.push(b' ');
            }
            self.buf.extend_from_slice(p);
        }
        self.buf.extend_from_slice(b"\r\n");
    }

    /// `mg <key> <flags…>`.
    pub fn mg(&mut self, key: &str, flags: &[&str]) -> &mut Self {
        let mut parts: Vec<&[u8]> = vec![b"mg", key.as_bytes()];
        parts.extend(flags.iter().map(|f| f.as_bytes()));
        self.line(&parts);
        self
    }

    /// `ms <key> <len> <flags…>` followed by the value.
    pub fn ms(&mut self, key: &str, value: &[u8], flags: &[&str]) -> &mut Self {
        let len = value.len().to_string();
        let mut parts: Vec<&[u8]> = vec![b"ms", key.as_bytes(), len.as_bytes()];
        parts.extend(flags.iter().map(|f| f.as_bytes()));
        self.line(&parts);
        self.buf.extend_from_slice(value);
        self.buf.extend_from_slice(b"\r\n");
        self
    }

    /// `md <key> <flags…>`.
    pub fn md(&mut self, key: &str, flags: &[&str]) -> &mut Self {
        let mut parts: Vec<&[u8]> = vec![b"md", key.as_bytes()];
        parts.extend(flags.iter().map(|f| f.as_bytes()));
        self.line(&parts);
        self
    }

    /// `ma <key> <flags…>`.
    pub fn ma(&mut self, key: &str, flags: &[&str]) -> &mut Self {
        let mut parts: Vec<&[u8]> = vec![b"ma", key.as_bytes()];
        parts.extend(flags.iter().map(|f| f.as_bytes()));
        self.line(&parts);
        self
    }

    /// `mn`: ends a pipeline of quiet commands.
    pub fn mn(&mut self) -> &mut Self {
        self.buf.extend_from_slice(b"mn\r\n");
        self
    }

    /// Any other command line (`flush_all`, `stats settings`, …).
    pub fn raw(&mut self, line: &str) -> &mut Self {
        self.line(&[line.as_bytes()]);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(input: &[u8]) -> Response {
        let (r, n) = parse(input, 1 << 20).unwrap().unwrap();
        assert_eq!(n, input.len(), "consumed all of {input:?}");
        r
    }

    #[test]
    fn parses_every_response_kind() {
        assert_eq!(one(b"HD\r\n"), Response::Hd(Flags::default()));
        assert_eq!(one(b"EN\r\n"), Response::En);
        assert_eq!(one(b"NF\r\n"), Response::Nf);
        assert_eq!(one(b"NS\r\n"), Response::Ns);
        assert_eq!(one(b"EX\r\n"), Response::Ex);
        assert_eq!(one(b"MN\r\n"), Response::Mn);
        assert_eq!(
            one(b"CLIENT_ERROR bad data chunk\r\n"),
            Response::ClientError("bad data chunk".into())
        );
        assert_eq!(
            one(b"SERVER_ERROR out of memory\r\n"),
            Response::ServerError("out of memory".into())
        );
        assert_eq!(one(b"ERROR\r\n"), Response::Error(String::new()));
        match one(b"VA 2 t-1 c42 O7 W X Z\r\nhi\r\n") {
            Response::Va(d, f) => {
                assert_eq!(&d[..], b"hi");
                assert_eq!(f.ttl, Some(-1));
                assert_eq!(f.cas, Some(42));
                assert_eq!(f.opaque, Some(7));
                assert!(f.win && f.stale && f.already_won);
            }
            other => panic!("{other:?}"),
        }
        // Values may contain \r\n.
        match one(b"VA 4\r\n\r\n\r\n\r\n") {
            Response::Va(d, _) => assert_eq!(&d[..], b"\r\n\r\n"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn incomplete_input_asks_for_more() {
        let full = b"VA 5 t10\r\nhello\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut], 100), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn pipelined_responses_parse_one_by_one() {
        let input = b"VA 1 O1\r\na\r\nVA 1 O2\r\nb\r\nMN\r\n";
        let mut at = 0;
        let mut seen = Vec::new();
        while at < input.len() {
            let (r, n) = parse(&input[at..], 10).unwrap().unwrap();
            seen.push(r);
            at += n;
        }
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[2], Response::Mn);
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            &b"HELLO\r\n"[..],
            b"VA x\r\n",
            b"VA 2\r\nabc\r\n",
            b"VA -1\r\n",
            b"VA 99999999999999999999999\r\n",
            b"HD t9x\r\n",
            b"HD O99999999999\r\n",
            b"\r\n",
            b"HD\n",
            b"VA 3 c\r\n",
        ] {
            assert!(parse(bad, 100).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            parse(b"VA 101\r\n", 100),
            Err(ProtoError::ValueTooLarge(101))
        );
        assert_eq!(parse(&[b'x'; MAX_LINE], 100), Err(ProtoError::LineTooLong));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(0x5eed);
        let alphabet: &[u8] = b"VAHDENMNSFXOZWtc0123456789 \r\n-_xyz";
        for _ in 0..200_000 {
            let len = rng.usize(0..40);
            let input: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.bool() {
                        alphabet[rng.usize(..alphabet.len())]
                    } else {
                        rng.u8(..)
                    }
                })
                .collect();
            if let Ok(Some((_, n))) = parse(&input, 64) {
                assert!(n <= input.len());
            }
        }
    }

    #[test]
    fn requests_are_encoded_exactly() {
        let mut r = Requests::new();
        r.mg("k", &["v", "t"])
            .ms("k", b"ab", &["T10", "MS"])
            .md("k", &["q"])
            .ma("n", &["v", "D3"])
            .mn();
        assert_eq!(
            r.as_bytes(),
            b"mg k v t\r\nms k 2 T10 MS\r\nab\r\nmd k q\r\nma n v D3\r\nmn\r\n"
        );
    }
}

//! A small JSON value: what crosses the guest ABI. The SDK may use no crates.io
//! dependency (it builds with a bare Rust 1.63 `rustc`), so it carries its own
//! parser and serialiser, strict to RFC 8259.
//!
//! Kept lean on purpose: nothing here is generic (so an extension's crate
//! instantiates nothing of it, and rustc has little to do), and text is written
//! without `core::fmt`, floats included (a module links no formatting code
//! unless it formats something itself).

use std::cmp::Ordering;
use std::fmt;

/// Nesting deeper than this is refused rather than risking the guest's stack.
const MAX_DEPTH: usize = 128;

/// A JSON value. Integers that fit an `i64` stay exact; other numbers are `f64`.
/// Objects keep their keys in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Parses one JSON value (surrounding white space allowed).
    pub fn parse(text: &str) -> Result<Json, String> {
        let mut parser = Parser { bytes: text.as_bytes(), pos: 0 };
        parser.skip_ws();
        let value = parser.value(0)?;
        parser.skip_ws();
        if parser.pos != parser.bytes.len() {
            return Err(parser.fail("trailing characters after the value"));
        }
        Ok(value)
    }

    /// An object from `(key, value)` pairs.
    pub fn object(pairs: Vec<(&str, Json)>) -> Json {
        let mut object = Vec::with_capacity(pairs.len());
        for (key, value) in pairs {
            object.push((String::from(key), value));
        }
        Json::Object(object)
    }

    /// Appends this value's compact JSON text to `out`; non-finite floats become
    /// `null`, as JSON has no NaN.
    pub fn write_to(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(n) => push_int(out, *n),
            Json::Float(x) if x.is_finite() => push_float(out, *x),
            Json::Float(_) => out.push_str("null"),
            Json::String(s) => push_string(out, s),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_to(out);
                }
                out.push(']');
            }
            Json::Object(pairs) => {
                out.push('{');
                for (i, (key, value)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    push_string(out, key);
                    out.push(':');
                    value.write_to(out);
                }
                out.push('}');
            }
        }
    }

    /// This value's compact JSON text.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.write_to(&mut out);
        out
    }

    /// The value under `key`, when this is an object that has it.
    pub fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(pairs) => pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Json::Int(n) => Some(*n),
            Json::Float(f) if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => Some(*f as i64),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Json::Int(n) => Some(*n as f64),
            Json::Float(f) => Some(*f),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Json::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Json]> {
        match self {
            Json::Array(items) => Some(items),
            _ => None,
        }
    }
}

impl From<&str> for Json {
    fn from(s: &str) -> Json {
        Json::String(s.to_string())
    }
}

impl From<String> for Json {
    fn from(s: String) -> Json {
        Json::String(s)
    }
}

impl From<i64> for Json {
    fn from(n: i64) -> Json {
        Json::Int(n)
    }
}

impl From<i32> for Json {
    fn from(n: i32) -> Json {
        Json::Int(n as i64)
    }
}

impl From<f64> for Json {
    fn from(f: f64) -> Json {
        Json::Float(f)
    }
}

impl From<bool> for Json {
    fn from(b: bool) -> Json {
        Json::Bool(b)
    }
}

impl From<Vec<Json>> for Json {
    fn from(items: Vec<Json>) -> Json {
        Json::Array(items)
    }
}

impl fmt::Display for Json {
    /// Compact JSON text (as [`Json::write_to`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_json())
    }
}

/// Appends the decimal digits of `n`.
pub(crate) fn push_int(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    push_uint(out, n.unsigned_abs());
}

pub(crate) fn push_uint(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for digit in &digits[at..] {
        out.push(*digit as char);
    }
}

/// The shortest text that reads back as `x`, in the form Rust's `{}` gives it
/// (`{:e}` for very large and very small magnitudes: plain digits would run to
/// 300 places, more than some parsers, serde_json's, take back). Written
/// without `core::fmt`, whose float code is most of a small module's size.
fn push_float(out: &mut String, x: f64) {
    if x.is_sign_negative() {
        out.push('-');
    }
    let magnitude = x.abs();
    if magnitude == 0.0 {
        // "-0" would read back as the integer 0.
        out.push_str(if x.is_sign_negative() { "0.0" } else { "0" });
        return;
    }
    let (digits, k) = shortest(magnitude);
    let digit = |d: &u8| char::from(b'0' + d);
    if !(1e-6..1e16).contains(&magnitude) {
        out.push(digit(&digits[0]));
        if digits.len() > 1 {
            out.push('.');
            out.extend(digits[1..].iter().map(digit));
        }
        out.push('e');
        push_int(out, i64::from(k) - 1);
    } else if k <= 0 {
        out.push_str("0.");
        push_zeros(out, k.unsigned_abs() as usize);
        out.extend(digits.iter().map(digit));
    } else {
        let point = k as usize;
        out.extend(digits.iter().take(point).map(digit));
        push_zeros(out, point.saturating_sub(digits.len()));
        if point < digits.len() {
            out.push('.');
            out.extend(digits[point..].iter().map(digit));
        }
    }
}

/// (`iter::repeat_n` is newer than the Rust 1.63 the SDK builds with.)
fn push_zeros(out: &mut String, count: usize) {
    for _ in 0..count {
        out.push('0');
    }
}

/// The shortest decimal digits that read back as `x` (finite, > 0), the
/// closest to `x` when several are as short, and `k` with `x ≈ 0.d₁d₂… × 10^k`:
/// Burger and Dybvig's free-format algorithm ("Printing Floating-Point Numbers
/// Quickly and Accurately", 1996), exact in big integers. `r / s` is `x`;
/// `m⁺ / s` and `m⁻ / s` are the distances to the midpoints with its neighbours,
/// which a reader rounding to even reaches when `x`'s mantissa is even.
fn shortest(x: f64) -> (Vec<u8>, i32) {
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1 << 52) - 1);
    let (f, e) = if biased == 0 { (fraction, -1074) } else { (fraction | 1 << 52, biased - 1075) };
    let even = f % 2 == 0;
    // At a power of two (but the smallest normal), the neighbour below is
    // half as far as the one above.
    let closer_below = biased > 1 && fraction == 0;
    let (mut r, mut s, mut m_plus, mut m_minus) = (Big::from(f), Big::from(1), Big::from(1), Big::from(1));
    if e >= 0 {
        let shift = e as u32;
        r.shl(shift + 1);
        m_plus.shl(shift);
        m_minus.shl(shift);
        s.shl(1);
    } else {
        r.shl(1);
        s.shl((1 - e) as u32);
    }
    if closer_below {
        r.shl(1);
        s.shl(1);
        m_plus.shl(1);
    }
    // k is ⌈log₁₀ of the upper midpoint⌉; the estimate from the binary exponent
    // is that or one less, and the loop settles it.
    let bit_length = 64 - f.leading_zeros() as i32;
    let mut k = (f64::from(e + bit_length - 1) * core::f64::consts::LOG10_2 - 1e-10).ceil() as i32;
    if k >= 0 {
        s.mul_pow10(k as u32);
    } else {
        for big in [&mut r, &mut m_plus, &mut m_minus] {
            big.mul_pow10(k.unsigned_abs());
        }
    }
    let reaches_up = |r: &Big, m_plus: &Big, s: &Big| {
        let high = r.add(m_plus).compare(s);
        high == Ordering::Greater || (even && high == Ordering::Equal)
    };
    while reaches_up(&r, &m_plus, &s) {
        s.mul_small(10);
        k += 1;
    }
    let mut digits = Vec::with_capacity(17);
    loop {
        for big in [&mut r, &mut m_plus, &mut m_minus] {
            big.mul_small(10);
        }
        let mut d = 0;
        while r.compare(&s) != Ordering::Less {
            r.sub_assign(&s);
            d += 1;
        }
        let low = r.compare(&m_minus);
        let low = low == Ordering::Less || (even && low == Ordering::Equal);
        let high = reaches_up(&r, &m_plus, &s);
        match (low, high) {
            (false, false) => digits.push(d),
            (true, false) => {
                digits.push(d);
                break;
            }
            (false, true) => {
                digits.push(d + 1);
                break;
            }
            (true, true) => {
                let mut twice = r;
                twice.shl(1);
                digits.push(if twice.compare(&s) == Ordering::Less { d } else { d + 1 });
                break;
            }
        }
    }
    (digits, k)
}

/// An unsigned integer of 1,280 bits: room for the scaled values of any `f64`
/// in [`shortest`] (at most about 1,140 bits). Its operations are kept out of
/// line: inlined and unrolled, they made the printer 8 KB of code.
#[derive(Clone, Copy)]
struct Big {
    /// Least significant first.
    limbs: [u32; 40],
}

impl Big {
    #[inline(never)]
    fn from(x: u64) -> Big {
        let mut limbs = [0; 40];
        limbs[0] = x as u32;
        limbs[1] = (x >> 32) as u32;
        Big { limbs }
    }

    #[inline(never)]
    fn shl(&mut self, bits: u32) {
        let (words, rest) = ((bits / 32) as usize, bits % 32);
        if words > 0 {
            for i in (0..self.limbs.len()).rev() {
                self.limbs[i] = if i >= words { self.limbs[i - words] } else { 0 };
            }
        }
        if rest > 0 {
            let mut carry = 0;
            for limb in self.limbs.iter_mut() {
                let shifted = (*limb << rest) | carry;
                carry = *limb >> (32 - rest);
                *limb = shifted;
            }
        }
    }

    #[inline(never)]
    fn mul_small(&mut self, factor: u32) {
        let mut carry = 0u64;
        for limb in self.limbs.iter_mut() {
            let product = u64::from(*limb) * u64::from(factor) + carry;
            *limb = product as u32;
            carry = product >> 32;
        }
    }

    #[inline(never)]
    fn mul_pow10(&mut self, mut exponent: u32) {
        while exponent >= 9 {
            self.mul_small(1_000_000_000);
            exponent -= 9;
        }
        self.mul_small(10u32.pow(exponent));
    }

    #[inline(never)]
    fn add(&self, other: &Big) -> Big {
        let mut sum = Big { limbs: [0; 40] };
        let mut carry = 0u64;
        for (i, limb) in sum.limbs.iter_mut().enumerate() {
            let total = u64::from(self.limbs[i]) + u64::from(other.limbs[i]) + carry;
            *limb = total as u32;
            carry = total >> 32;
        }
        sum
    }

    /// `self -= other`, where `other <= self`.
    #[inline(never)]
    fn sub_assign(&mut self, other: &Big) {
        let mut borrow = false;
        for (limb, subtrahend) in self.limbs.iter_mut().zip(other.limbs.iter()) {
            let (difference, under) = limb.overflowing_sub(*subtrahend);
            let (difference, under_again) = difference.overflowing_sub(u32::from(borrow));
            *limb = difference;
            borrow = under || under_again;
        }
    }

    #[inline(never)]
    fn compare(&self, other: &Big) -> Ordering {
        self.limbs.iter().rev().cmp(other.limbs.iter().rev())
    }
}

fn push_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                out.push_str("\\u00");
                out.push(HEX[(c as usize) >> 4] as char);
                out.push(HEX[(c as usize) & 15] as char);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn fail(&self, what: &str) -> String {
        let mut message = String::from(what);
        message.push_str(" at byte ");
        push_uint(&mut message, self.pos as u64);
        message
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn expect_word(&mut self, word: &str, value: Json) -> Result<Json, String> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.fail("unexpected character"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json, String> {
        if depth > MAX_DEPTH {
            return Err(self.fail("nesting too deep"));
        }
        match self.peek() {
            None => Err(self.fail("unexpected end of input")),
            Some(b'n') => self.expect_word("null", Json::Null),
            Some(b't') => self.expect_word("true", Json::Bool(true)),
            Some(b'f') => self.expect_word("false", Json::Bool(false)),
            Some(b'"') => self.string().map(Json::String),
            Some(b'[') => self.array(depth),
            Some(b'{') => self.object(depth),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.fail("unexpected character")),
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json, String> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Json::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Json::Array(items));
                }
                _ => return Err(self.fail("expected `,` or `]`")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json, String> {
        self.pos += 1;
        let mut pairs = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Json::Object(pairs));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.fail("expected a string key"));
            }
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.fail("expected `:`"));
            }
            self.pos += 1;
            self.skip_ws();
            let value = self.value(depth + 1)?;
            pairs.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Json::Object(pairs));
                }
                _ => return Err(self.fail("expected `,` or `}`")),
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            // The input is a &str and we stopped at ASCII, so this slice is UTF-8.
            out.push_str(std::str::from_utf8(&self.bytes[start..self.pos]).map_err(|_| self.fail("bad UTF-8"))?);
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escape = self.peek().ok_or_else(|| self.fail("unterminated escape"))?;
                    self.pos += 1;
                    match escape {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{08}'),
                        b'f' => out.push('\u{0c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape()?),
                        _ => return Err(self.fail("unknown escape")),
                    }
                }
                Some(_) => return Err(self.fail("control character in string")),
                None => return Err(self.fail("unterminated string")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self.bytes.get(self.pos..self.pos + 4).ok_or_else(|| self.fail("short \\u escape"))?;
        // Four hex digits exactly (`from_str_radix` would also take a sign:
        // `\u+83d`, found by fuzzing).
        let mut value = 0;
        for digit in digits {
            let nibble = (*digit as char).to_digit(16).ok_or_else(|| self.fail("bad \\u escape"))?;
            value = value * 16 + nibble;
        }
        self.pos += 4;
        Ok(value)
    }

    fn unicode_escape(&mut self) -> Result<char, String> {
        let first = self.hex4()?;
        let code = if (0xd800..0xdc00).contains(&first) {
            if !self.bytes[self.pos..].starts_with(b"\\u") {
                return Err(self.fail("unpaired surrogate"));
            }
            self.pos += 2;
            let second = self.hex4()?;
            if !(0xdc00..0xe000).contains(&second) {
                return Err(self.fail("unpaired surrogate"));
            }
            0x10000 + ((first - 0xd800) << 10) + (second - 0xdc00)
        } else {
            first
        };
        char::from_u32(code).ok_or_else(|| self.fail("invalid code point"))
    }

    fn number(&mut self) -> Result<Json, String> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.fail("expected a digit")),
        }
        let mut integral = true;
        if self.peek() == Some(b'.') {
            integral = false;
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.fail("expected a digit after `.`"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            integral = false;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.fail("expected a digit in the exponent"));
            }
            self.digits();
        }
        let text = std::str::from_utf8(&self.bytes[start..self.pos]).map_err(|_| self.fail("bad number"))?;
        if integral {
            if let Ok(n) = text.parse::<i64>() {
                return Ok(Json::Int(n));
            }
        }
        match text.parse::<f64>() {
            Ok(x) if x.is_finite() => Ok(Json::Float(x)),
            // As serde_json (the host's parser) does: 1e999 is no number.
            Ok(_) => Err(self.fail("number out of range")),
            Err(_) => Err(self.fail("bad number")),
        }
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind_of_value() {
        let text = r#"{"a":[1,-2,3.5,true,false,null],"b":{"c":"x\"y\\z\n\u0001"},"big":1e300}"#;
        let value = Json::parse(text).unwrap();
        assert_eq!(value.get("a").unwrap().as_array().unwrap()[1], Json::Int(-2));
        assert_eq!(value.get("b").unwrap().get("c").unwrap().as_str(), Some("x\"y\\z\n\u{1}"));
        let again = Json::parse(&value.to_string()).unwrap();
        assert_eq!(again, value);
    }

    #[test]
    fn integers_stay_exact_and_overflow_to_float() {
        assert_eq!(Json::parse("9007199254740993").unwrap(), Json::Int(9_007_199_254_740_993));
        assert_eq!(Json::parse("99999999999999999999").unwrap(), Json::Float(1e20));
        assert_eq!(Json::parse("-0").unwrap(), Json::Int(0));
    }

    #[test]
    fn decodes_surrogate_pairs() {
        assert_eq!(Json::parse(r#""\ud83d\ude00""#).unwrap(), Json::from("😀"));
        assert!(Json::parse(r#""\ud83d""#).is_err());
    }

    #[test]
    fn refuses_what_rfc_8259_refuses() {
        for bad in ["", "01", "1.", ".5", "+1", "[1,]", "{\"a\" 1}", "{a:1}", "\"\t\"", "nul", "1 2", "[", "\"abc"] {
            assert!(Json::parse(bad).is_err(), "{:?} should be refused", bad);
        }
        let deep = "[".repeat(MAX_DEPTH + 2);
        assert!(Json::parse(&deep).unwrap_err().contains("nesting too deep"));
    }

    #[test]
    fn numbers_far_from_one_print_with_an_exponent_and_read_back() {
        for (x, text) in [
            (1.7976931348623157e308, "1.7976931348623157e308"),
            (1.8446744073709552e19, "1.8446744073709552e19"),
            (5e-324, "5e-324"),
            (-2.5e-7, "-2.5e-7"),
            (0.5, "0.5"),
            (1234.5, "1234.5"),
        ] {
            assert_eq!(Json::Float(x).to_string(), text);
            assert_eq!(Json::parse(text).unwrap(), Json::Float(x));
        }
        assert!(Json::parse("1e999").unwrap_err().contains("out of range"));
        assert_eq!(Json::parse("-0e10").unwrap().to_string(), "-0.0");
        assert_eq!(Json::parse("-0.0").unwrap().to_string(), "-0.0");
    }

    /// What the SDK printed before it had its own float printer (Rust's).
    fn as_rust_prints(x: f64) -> String {
        let magnitude = x.abs();
        if x == 0.0 && x.is_sign_negative() {
            "-0.0".to_string()
        } else if magnitude >= 1e16 || (magnitude != 0.0 && magnitude < 1e-6) {
            format!("{:e}", x)
        } else {
            format!("{}", x)
        }
    }

    #[test]
    fn floats_print_as_rust_prints_them_and_read_back() {
        let edges = [
            0.0,
            -0.0,
            f64::MIN_POSITIVE,
            f64::MIN_POSITIVE - 5e-324,
            5e-324,
            1e-7,
            1e-6,
            f64::from_bits(1e-6f64.to_bits() - 1),
            f64::from_bits(1e16f64.to_bits() - 1),
            0.1,
            0.3,
            1.0,
            2.0,
            1.5,
            123456789.0,
            9007199254740992.0,
            9007199254740993.0,
            1e15,
            9999999999999998.0,
            1e16,
            1e21,
            1e22,
            1e23,
            f64::MAX,
            f64::EPSILON,
            std::f64::consts::PI,
            2f64.powi(-1022),
            2f64.powi(1023),
            2f64.powi(-1000),
        ];
        // Every power of two (the uneven-neighbour case), then random bit patterns.
        let powers = (-1074..1024).map(|e| 2f64.powi(e));
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let random = std::iter::repeat_with(move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            f64::from_bits(state)
        })
        .filter(|x| x.is_finite())
        .take(15_000);
        for x in edges.iter().copied().chain(powers).chain(random) {
            for x in [x, -x] {
                let mut text = String::new();
                push_float(&mut text, x);
                assert_eq!(text, as_rust_prints(x), "bits {:#x}", x.to_bits());
                assert_eq!(text.parse::<f64>().unwrap().to_bits(), x.to_bits(), "{}", text);
            }
        }
    }

    #[test]
    fn a_unicode_escape_is_four_hex_digits() {
        assert_eq!(Json::parse(r#""\u00e9\uD83D\uDE00""#).unwrap(), Json::from("é😀"));
        for bad in [r#""\u+83d""#, r#""\u-001""#, r#""\u12""#, r#""\u 123""#, r#""\ud83d\u+e00""#] {
            assert!(Json::parse(bad).unwrap_err().contains("escape"), "{bad}");
        }
    }

    #[test]
    fn non_finite_floats_serialise_as_null() {
        assert_eq!(Json::Float(f64::NAN).to_string(), "null");
        assert_eq!(Json::object(vec![("x", Json::Float(1.5))]).to_string(), r#"{"x":1.5}"#);
    }

    #[test]
    fn text_is_compact_json_without_fmt_but_for_floats() {
        let value = Json::object(vec![
            ("i", Json::Int(i64::MIN)),
            ("u", Json::Int(0)),
            ("f", Json::Float(0.1)),
            ("nan", Json::Float(f64::NAN)),
            ("s", Json::from("a\"b\\c\n\u{1}é")),
            ("a", Json::Array(vec![Json::Bool(true), Json::Null])),
        ]);
        assert_eq!(
            value.to_json(),
            r#"{"i":-9223372036854775808,"u":0,"f":0.1,"nan":null,"s":"a\"b\\c\n\u0001é","a":[true,null]}"#
        );
        assert_eq!(value.to_string(), value.to_json());
        assert_eq!(Json::parse("[1,").unwrap_err(), "unexpected end of input at byte 3");
    }
}

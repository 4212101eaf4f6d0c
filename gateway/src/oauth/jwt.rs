//! What kind of JWT a compact JWS is, and its time claims: the two checks
//! every JWT the project signs or verifies goes through before its claims
//! mean anything.
//!
//! Kinds. The project signs access tokens (`typ: at+jwt`, RFC 9068) and
//! detached response signatures (`typ: JOSE`, with critical UK Open Banking
//! header parameters), and verifies those plus client assertions (RFC 7523),
//! software statements and signed registration requests. A signature made
//! for one kind must never pass as another (a signed answer whose body holds
//! token claims is not a token), so each verifier names the kind it expects
//! and [`check_header`] refuses every other `typ`, and any `crit` parameter
//! the verifier does not understand (RFC 7515 4.1.11). `typ` is compared
//! case-insensitively with an optional `application/` prefix (RFC 7515 4.1.9).
//!
//! Time. `exp`, `nbf` and `iat` are NumericDates (RFC 7519 2): JSON numbers,
//! integers or not. [`numeric_date`] is the one reader: a non-integer is
//! rounded up to the next whole second (later expiry by under a second;
//! never an earlier `nbf` or `iat`, never a shorter stay in a replay
//! cache), anything that is not a non-negative number below the year 10000
//! is refused instead of being read as 0.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::{Map, Value};

/// The kinds of JWT the project signs or verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An access token of the built-in key manager: `typ` must be `at+jwt`.
    AccessToken,
    /// An access token of an external KeyManager: `at+jwt`, or the generic
    /// `JWT` / no `typ` that many identity providers still send; any other
    /// kind is refused.
    ExternalAccessToken,
    /// A client assertion (RFC 7523): no `typ`, `JWT`, or
    /// `client-authentication+jwt`.
    ClientAssertion,
    /// A directory's software statement: no `typ` or `JWT`.
    SoftwareStatement,
    /// A signed dynamic-registration request: no `typ` or `JWT`.
    RegistrationRequest,
    /// A detached request or response signature (`x-jws-signature`): no
    /// `typ` or `JOSE`.
    DetachedSignature,
}

impl Kind {
    /// The `typ` values accepted (lower case, without `application/`), and
    /// whether a JWS without `typ` is accepted.
    fn types(self) -> (&'static [&'static str], bool) {
        match self {
            Kind::AccessToken => (&["at+jwt"], false),
            Kind::ExternalAccessToken => (&["at+jwt", "jwt"], true),
            Kind::ClientAssertion => (&["jwt", "client-authentication+jwt"], true),
            Kind::SoftwareStatement | Kind::RegistrationRequest => (&["jwt"], true),
            Kind::DetachedSignature => (&["jose"], true),
        }
    }

    /// Critical header parameters a verifier of this kind understands.
    fn understood(self) -> &'static [&'static str] {
        match self {
            Kind::DetachedSignature => &DETACHED_CRITICAL,
            _ => &[],
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::AccessToken | Kind::ExternalAccessToken => "an access token",
            Kind::ClientAssertion => "a client assertion",
            Kind::SoftwareStatement => "a software statement",
            Kind::RegistrationRequest => "a registration request",
            Kind::DetachedSignature => "a detached signature",
        }
    }
}

/// Critical header parameters of detached signatures (RFC 7797 `b64` and
/// the UK Open Banking claims).
pub const DETACHED_CRITICAL: [&str; 4] =
    ["b64", "http://openbanking.org.uk/iat", "http://openbanking.org.uk/iss", "http://openbanking.org.uk/tan"];

/// Why a JWS is not of the kind a verifier expects.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KindError {
    #[error("the JWS header is not a base64url JSON object")]
    Malformed,
    #[error("typ {found:?} is not {expected}")]
    WrongType { found: String, expected: &'static str },
    #[error("typ is required for {0}")]
    MissingType(&'static str),
    #[error("crit must be a non-empty list of header parameter names present in the header")]
    BadCritical,
    #[error("the critical header parameter {0:?} is not understood")]
    Critical(String),
}

/// The JOSE header of a compact or detached JWS.
pub fn header_of(jws: &str) -> Result<Map<String, Value>, KindError> {
    let h = jws.trim().split('.').next().ok_or(KindError::Malformed)?;
    let bytes = B64.decode(h).map_err(|_| KindError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| KindError::Malformed)
}

/// `typ` as compared: lower case, without the `application/` prefix.
fn normalised_type(typ: &str) -> String {
    let t = typ.trim().to_ascii_lowercase();
    t.strip_prefix("application/").map(str::to_string).unwrap_or(t)
}

/// Checks a JWS header for `kind`: its `typ`, and `crit` (RFC 7515 4.1.11:
/// a list, not empty, of parameters the header holds, each understood);
/// the critical names, for the caller that honours them.
pub fn check_header(header: &Map<String, Value>, kind: Kind) -> Result<Vec<String>, KindError> {
    let (accepted, absent_ok) = kind.types();
    match header.get("typ") {
        None if absent_ok => {}
        None => return Err(KindError::MissingType(kind.name())),
        Some(Value::String(t)) if accepted.contains(&normalised_type(t).as_str()) => {}
        Some(other) => {
            let found = other.as_str().map(str::to_string).unwrap_or_else(|| other.to_string());
            return Err(KindError::WrongType { found, expected: kind.name() });
        }
    }
    let crit = match header.get("crit") {
        None => return Ok(Vec::new()),
        Some(Value::Array(c)) if !c.is_empty() => c,
        Some(_) => return Err(KindError::BadCritical),
    };
    let mut names = Vec::with_capacity(crit.len());
    for c in crit {
        let name = c.as_str().ok_or(KindError::BadCritical)?;
        if !kind.understood().contains(&name) {
            return Err(KindError::Critical(name.to_string()));
        }
        if !header.contains_key(name) {
            return Err(KindError::BadCritical);
        }
        names.push(name.to_string());
    }
    Ok(names)
}

/// [`check_header`] on the header of `jws`.
pub fn check(jws: &str, kind: Kind) -> Result<Vec<String>, KindError> {
    check_header(&header_of(jws)?, kind)
}

/// The latest NumericDate accepted: 9999-12-31T23:59:59Z.
pub const MAX_NUMERIC_DATE: u64 = 253_402_300_799;

/// Why a time claim cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{claim} must be a NumericDate (seconds since 1970 as a JSON number)")]
pub struct DateError {
    pub claim: &'static str,
}

/// A NumericDate as whole seconds, a non-integer rounded up.
pub fn numeric_date(v: &Value) -> Option<u64> {
    let Value::Number(n) = v else { return None };
    if let Some(u) = n.as_u64() {
        return (u <= MAX_NUMERIC_DATE).then_some(u);
    }
    let f = n.as_f64()?;
    if !f.is_finite() || f < 0.0 || f > MAX_NUMERIC_DATE as f64 {
        return None;
    }
    // Within 0 ..= MAX_NUMERIC_DATE: the cast is exact.
    Some(f.ceil() as u64)
}

/// The time claims of a JWT, each read by [`numeric_date`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Times {
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    pub iat: Option<u64>,
}

/// Why a JWT's times refuse it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error(transparent)]
    Unreadable(#[from] DateError),
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("expired")]
    Expired,
    #[error("not valid yet")]
    NotYetValid,
    #[error("issued in the future")]
    IssuedInFuture,
}

impl Times {
    /// Reads `exp`, `nbf` and `iat`; a present claim that is not a
    /// NumericDate is an error, never a missing claim.
    pub fn read(claims: &Map<String, Value>) -> Result<Times, DateError> {
        let one = |claim: &'static str| match claims.get(claim) {
            None => Ok(None),
            Some(v) => numeric_date(v).map(Some).ok_or(DateError { claim }),
        };
        Ok(Times { exp: one("exp")?, nbf: one("nbf")?, iat: one("iat")? })
    }

    /// Checks the times at `now` with `leeway` seconds of skew: `exp`
    /// (required when `need_exp`) not passed, `nbf` and `iat` not ahead.
    pub fn check(&self, now: u64, leeway: u64, need_exp: bool) -> Result<(), TimeError> {
        match self.exp {
            None if need_exp => return Err(TimeError::Missing("exp")),
            Some(exp) if exp.saturating_add(leeway) < now => return Err(TimeError::Expired),
            _ => {}
        }
        if self.nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Err(TimeError::NotYetValid);
        }
        if self.iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
            return Err(TimeError::IssuedInFuture);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn h(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn each_kind_accepts_its_own_typ_only() {
        assert!(check_header(&h(json!({"alg": "ES256", "typ": "at+jwt"})), Kind::AccessToken).is_ok());
        assert!(check_header(&h(json!({"alg": "ES256", "typ": "application/AT+JWT"})), Kind::AccessToken).is_ok());
        assert_eq!(
            check_header(&h(json!({"alg": "ES256"})), Kind::AccessToken),
            Err(KindError::MissingType("an access token"))
        );
        for other in ["JWT", "JOSE", "dpop+jwt", "oauth-authz-req+jwt"] {
            assert!(check_header(&h(json!({"typ": other})), Kind::AccessToken).is_err(), "{other}");
        }
        for ok in [json!({}), json!({"typ": "JWT"}), json!({"typ": "at+jwt"})] {
            assert!(check_header(&h(ok.clone()), Kind::ExternalAccessToken).is_ok(), "{ok}");
        }
        for refused in ["JOSE", "dpop+jwt", "client-authentication+jwt", "secevent+jwt"] {
            assert!(check_header(&h(json!({"typ": refused})), Kind::ExternalAccessToken).is_err(), "{refused}");
        }
        assert!(check_header(&h(json!({"typ": "at+jwt"})), Kind::ClientAssertion).is_err());
        assert!(check_header(&h(json!({"typ": "client-authentication+jwt"})), Kind::ClientAssertion).is_ok());
        assert!(check_header(&h(json!({"typ": "JOSE"})), Kind::DetachedSignature).is_ok());
        assert!(check_header(&h(json!({"typ": "at+jwt"})), Kind::DetachedSignature).is_err());
        assert!(check_header(&h(json!({"typ": 1})), Kind::SoftwareStatement).is_err(), "typ must be a string");
    }

    #[test]
    fn critical_parameters_must_be_understood_and_present() {
        let iat = "http://openbanking.org.uk/iat";
        let signed_answer = json!({"alg": "ES256", "typ": "JOSE", iat: 1, "crit": [iat]});
        assert_eq!(check_header(&h(signed_answer.clone()), Kind::DetachedSignature), Ok(vec![iat.to_string()]));
        // The same header presented as an access token: refused twice over.
        let mut as_token = signed_answer.clone();
        as_token["typ"] = json!("at+jwt");
        assert_eq!(check_header(&h(as_token), Kind::AccessToken), Err(KindError::Critical(iat.into())));
        assert_eq!(check_header(&h(json!({"crit": []})), Kind::DetachedSignature), Err(KindError::BadCritical));
        assert_eq!(check_header(&h(json!({"crit": "b64"})), Kind::DetachedSignature), Err(KindError::BadCritical));
        assert_eq!(check_header(&h(json!({"crit": ["b64"]})), Kind::DetachedSignature), Err(KindError::BadCritical));
        assert_eq!(
            check_header(&h(json!({"crit": ["exp"], "exp": 1})), Kind::DetachedSignature),
            Err(KindError::Critical("exp".into()))
        );
        assert_eq!(
            check_header(&h(json!({"crit": ["x"], "x": 1})), Kind::ClientAssertion),
            Err(KindError::Critical("x".into()))
        );
        assert_eq!(check("!!.e30.", Kind::AccessToken), Err(KindError::Malformed));
    }

    #[test]
    fn numeric_dates_refuse_what_is_not_a_number_of_seconds() {
        assert_eq!(numeric_date(&json!(1_700_000_000)), Some(1_700_000_000));
        assert_eq!(numeric_date(&json!(1_700_000_000.5)), Some(1_700_000_001));
        assert_eq!(numeric_date(&json!(1e9)), Some(1_000_000_000));
        assert_eq!(numeric_date(&json!(0)), Some(0));
        for bad in [json!(-1), json!(-0.5), json!("1700000000"), json!(null), json!([1]), json!(1e300), json!(true)] {
            assert_eq!(numeric_date(&bad), None, "{bad}");
        }
        assert_eq!(numeric_date(&json!(MAX_NUMERIC_DATE + 1)), None);
        let claims = h(json!({"exp": "tomorrow"}));
        assert_eq!(Times::read(&claims), Err(DateError { claim: "exp" }));
    }

    #[test]
    fn time_checks_apply_the_leeway_once() {
        let now = 1_000_000;
        let t = |exp: Option<u64>, nbf: Option<u64>, iat: Option<u64>| Times { exp, nbf, iat };
        assert_eq!(t(None, None, None).check(now, 30, true), Err(TimeError::Missing("exp")));
        assert_eq!(t(None, None, None).check(now, 30, false), Ok(()));
        assert_eq!(t(Some(now - 31), None, None).check(now, 30, true), Err(TimeError::Expired));
        assert_eq!(t(Some(now - 30), None, None).check(now, 30, true), Ok(()));
        assert_eq!(t(Some(now + 9), Some(now + 31), None).check(now, 30, true), Err(TimeError::NotYetValid));
        assert_eq!(t(Some(now + 9), None, Some(now + 31)).check(now, 30, true), Err(TimeError::IssuedInFuture));
        assert_eq!(t(Some(u64::MAX), Some(0), Some(0)).check(u64::MAX, 30, true), Ok(()));
    }

    proptest! {
        /// An integer and any non-integer above it within the same second
        /// read as that second (rounded up), whatever JSON spelling is used.
        #[test]
        fn integers_and_fractions_read_the_same_way(secs in 0u64..MAX_NUMERIC_DATE, frac in 1u32..1000) {
            let whole: Value = serde_json::from_str(&secs.to_string()).unwrap();
            prop_assert_eq!(numeric_date(&whole), Some(secs));
            let fraction: Value = serde_json::from_str(&format!("{secs}.{frac:03}")).unwrap();
            let read = numeric_date(&fraction).unwrap();
            // f64 holds every second up to year 10000 with millisecond
            // fractions: the reading is the next whole second.
            prop_assert_eq!(read, secs + 1);
            let exp: Value = serde_json::from_str(&format!("{secs}.0")).unwrap();
            prop_assert_eq!(numeric_date(&exp), Some(secs));
            // The same document through Times: the same seconds.
            let doc: Map<String, Value> =
                serde_json::from_str(&format!(r#"{{"exp":{secs}.{frac:03},"nbf":{secs},"iat":{secs}.{frac:03}}}"#)).unwrap();
            let t = Times::read(&doc).unwrap();
            prop_assert_eq!((t.exp, t.nbf, t.iat), (Some(secs + 1), Some(secs), Some(secs + 1)));
        }
    }
}

//! Developer accounts: sign-up, sign-in (argon2id, throttled per address),
//! sign-out.

use askama::Template;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::session::{SESSION_TTL_MS, Visitor, read_form};
use super::{Layout, Portal, message, page, see_other, store_failure};
use crate::store::db::StoreError;
use crate::store::portal::SignInAttempt;
use crate::throttle::now_ms;

/// Failed sign-ins allowed per address within [`FAILURE_WINDOW_MS`].
pub const MAX_FAILURES: i64 = 5;
pub const FAILURE_WINDOW_MS: i64 = 15 * 60_000;
const MIN_PASSWORD: usize = 12;
const MAX_PASSWORD: usize = 1024;

#[derive(Template)]
#[template(path = "portal/signup.html")]
struct SignUpPage {
    layout: Layout,
    email: String,
}

#[derive(Template)]
#[template(path = "portal/signin.html")]
struct SignInPage {
    layout: Layout,
    email: String,
}

#[derive(Deserialize)]
pub struct Credentials {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
}

/// An e-mail address as stored: trimmed, lower-cased, one `@` with text on
/// both sides, no spaces or control characters, at most 254 bytes.
pub fn normalize_email(raw: &str) -> Option<String> {
    let e = raw.trim().to_lowercase();
    let (local, domain) = e.split_once('@')?;
    let ok = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && e.len() <= 254
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then_some(e)
}

/// An argon2id hash (PHC string) of a password, off the async workers.
pub async fn hash_password(password: String) -> Option<String> {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
        let salt = SaltString::generate(&mut OsRng);
        argon2::Argon2::default().hash_password(password.as_bytes(), &salt).ok().map(|h| h.to_string())
    })
    .await
    .ok()
    .flatten()
}

/// Whether a password matches a stored hash (off the async workers). With
/// no stored hash a throwaway one is checked, so an unknown address takes
/// as long as a wrong password.
pub async fn verify_password(password: String, stored: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        use argon2::password_hash::{PasswordHash, PasswordVerifier};
        static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let dummy = DUMMY.get_or_init(|| {
            use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
            let salt = SaltString::generate(&mut OsRng);
            argon2::Argon2::default().hash_password(b"not a password", &salt).map(|h| h.to_string()).unwrap_or_default()
        });
        let known = stored.is_some();
        let text = stored.unwrap_or_else(|| dummy.clone());
        let Ok(parsed) = PasswordHash::new(&text) else { return false };
        argon2::Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok() && known
    })
    .await
    .unwrap_or(false)
}

pub async fn signup_page(State(p): State<Portal>, v: Visitor) -> Response {
    page(&p, &v, StatusCode::OK, &SignUpPage { layout: Layout::new(&p, &v, "Create account"), email: String::new() })
}

pub async fn signin_page(State(p): State<Portal>, v: Visitor) -> Response {
    page(&p, &v, StatusCode::OK, &SignInPage { layout: Layout::new(&p, &v, "Sign in"), email: String::new() })
}

pub async fn signup(State(p): State<Portal>, mut v: Visitor, headers: HeaderMap, body: Bytes) -> Response {
    let c: Credentials = match read_form(&p, &v, &headers, &body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let again = |v: &Visitor, status, error: String, email: String| {
        let t = SignUpPage { layout: Layout::new(&p, v, "Create account").error(error), email };
        page(&p, v, status, &t)
    };
    let Some(email) = normalize_email(&c.email) else {
        return again(&v, StatusCode::UNPROCESSABLE_ENTITY, "Enter a valid e-mail address.".into(), c.email);
    };
    if c.password.chars().count() < MIN_PASSWORD || c.password.len() > MAX_PASSWORD {
        return again(
            &v,
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("Choose a password of at least {MIN_PASSWORD} characters."),
            email,
        );
    }
    if let Err(e) = p.store.ensure_migrated().await {
        return store_failure(&p, &v, e);
    }
    let Some(hash) = hash_password(c.password).await else {
        return message(
            &p,
            &v,
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong",
            "The password could not be hashed.",
        );
    };
    let dev = match p.store.db.create_developer(&email, &hash).await {
        Ok(d) => d,
        Err(StoreError::Conflict(m)) => {
            return again(&v, StatusCode::CONFLICT, format!("{m}; sign in instead."), email);
        }
        Err(e) => return store_failure(&p, &v, e),
    };
    tracing::info!(developer = %dev.id, "portal: developer signed up");
    start_session(&p, &mut v, Some(dev), "/portal/applications").await
}

/// Opens a session (a developer's, or an administrator's when None) and
/// sends the browser on.
pub async fn start_session(
    p: &Portal,
    v: &mut Visitor,
    dev: Option<crate::store::portal::Developer>,
    to: &str,
) -> Response {
    // A new session: any earlier one of this browser ends.
    if let Some(old) = v.session_cookie.clone() {
        let _ = p.store.db.delete_session(&old).await;
    }
    let admin_token = p.store.admin_token.as_deref();
    match p.store.db.create_session(dev.as_ref().map(|d| d.id.as_str()), admin_token, SESSION_TTL_MS).await {
        Ok(s) => {
            let session =
                crate::store::portal::Session { is_admin: dev.is_none(), developer: dev, csrf: s.csrf.clone() };
            v.signed_in(&s.cookie, s.csrf, session);
            see_other(p, v, to)
        }
        Err(e) => store_failure(p, v, e),
    }
}

/// Reserves a sign-in attempt for `key` before its secret is checked, or
/// refuses when the address has failed too often lately; Err is the page.
/// The reservation stays as a failure unless the caller releases it or
/// clears the address's failures.
pub async fn reserve_attempt(p: &Portal, v: &Visitor, key: &str) -> Result<SignInAttempt, Response> {
    let since = now_ms() as i64 - FAILURE_WINDOW_MS;
    match p.store.db.reserve_sign_in(key, since, MAX_FAILURES).await {
        Ok(None) => Err(message(
            p,
            v,
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts",
            format!(
                "Sign-in for this account is paused after {MAX_FAILURES} failed attempts; try again in 15 minutes."
            ),
        )),
        Ok(Some(attempt)) => Ok(attempt),
        Err(e) => Err(store_failure(p, v, e)),
    }
}

pub async fn signin(State(p): State<Portal>, mut v: Visitor, headers: HeaderMap, body: Bytes) -> Response {
    let c: Credentials = match read_form(&p, &v, &headers, &body) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let email = normalize_email(&c.email).unwrap_or_else(|| c.email.trim().to_lowercase());
    if let Err(e) = p.store.ensure_migrated().await {
        return store_failure(&p, &v, e);
    }
    let attempt = match reserve_attempt(&p, &v, &email).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let found = match p.store.db.developer_by_email(&email).await {
        Ok(f) => f,
        Err(e) => return store_failure(&p, &v, e),
    };
    let (dev, stored) = match found {
        Some((d, h)) => (Some(d), Some(h)),
        None => (None, None),
    };
    let ok = c.password.len() <= MAX_PASSWORD && verify_password(c.password, stored).await;
    match dev {
        Some(d) if ok && d.disabled_at_ms.is_none() => {
            let _ = p.store.db.clear_sign_in_failures(&email).await;
            start_session(&p, &mut v, Some(d), "/portal/applications").await
        }
        Some(d) if ok => {
            let _ = p.store.db.release_sign_in(&attempt).await;
            message(
                &p,
                &v,
                StatusCode::FORBIDDEN,
                "Account disabled",
                format!("The account {} is disabled; contact the portal's administrators.", d.email),
            )
        }
        // The reservation stays: it is the failure.
        _ => {
            let t =
                SignInPage { layout: Layout::new(&p, &v, "Sign in").error("Wrong e-mail address or password."), email };
            page(&p, &v, StatusCode::UNAUTHORIZED, &t)
        }
    }
}

#[derive(Deserialize)]
pub struct Nothing {}

pub async fn signout(State(p): State<Portal>, mut v: Visitor, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = read_form::<Nothing>(&p, &v, &headers, &body) {
        return r;
    }
    if let Some(c) = v.session_cookie.clone()
        && let Err(e) = p.store.db.delete_session(&c).await
    {
        return store_failure(&p, &v, e);
    }
    v.signed_out();
    let t = SignInPage { layout: Layout::new(&p, &v, "Sign in").notice("You are signed out."), email: String::new() };
    page(&p, &v, StatusCode::OK, &t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalized_or_refused() {
        assert_eq!(normalize_email("  Dev@Bank.Example "), Some("dev@bank.example".into()));
        for bad in ["", "dev", "@bank.example", "dev@", "dev@bank", "a b@bank.example", "dev@.example", "a@b@c.d"] {
            assert_eq!(normalize_email(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn passwords_verify_only_against_their_own_hash() {
        let h = hash_password("correct horse battery".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse battery".into(), Some(h.clone())).await);
        assert!(!verify_password("correct horse battery!".into(), Some(h)).await);
        assert!(!verify_password("not a password".into(), None).await, "no account: never true");
    }
}

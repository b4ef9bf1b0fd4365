//! Who is asking: sessions (cookie + per-session CSRF token), API tokens, and the login
//! rate limiter.
//!
//! Every state-changing request must carry either a valid session AND its CSRF token, or a
//! valid bearer token. Reads need either a session or a token. The handlers decide what to do
//! with an [`Identity`]; this module only establishes it.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::config::{hash_token, random_hex, ConsoleConfig};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "twinfiler_session";
/// Header carrying the CSRF token on session-authenticated API calls from the console's JS.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Bytes of randomness in a session id and in a CSRF token.
const SESSION_ID_BYTES: usize = 32;
/// Window over which failed logins are counted.
const LOGIN_WINDOW: Duration = Duration::from_secs(60);
/// Most client addresses tracked by the rate limiter; beyond this the oldest entries go
/// (the global limit still holds, so an attacker cycling addresses gains nothing).
const RATE_LIMIT_IPS_MAX: usize = 4096;

/// A logged-in console session.
#[derive(Clone, Debug)]
pub struct Session {
    /// User name.
    pub user: String,
    /// Token every form and session-authenticated API POST must echo.
    pub csrf: String,
    created: Instant,
    last_seen: Instant,
}

/// How a request authenticated.
#[derive(Clone, Debug)]
pub enum Identity {
    /// A browser session.
    Session {
        /// Session id (the cookie value).
        id: String,
        /// The session.
        session: Session,
    },
    /// A bearer token.
    Token {
        /// The token's configured name.
        name: String,
    },
}

impl Identity {
    /// The name recorded in events ("admin", "token:ci").
    pub fn actor(&self) -> String {
        match self {
            Identity::Session { session, .. } => session.user.clone(),
            Identity::Token { name } => format!("token:{name}"),
        }
    }

    /// The CSRF token to embed in forms (sessions only).
    pub fn csrf(&self) -> Option<&str> {
        match self {
            Identity::Session { session, .. } => Some(&session.csrf),
            Identity::Token { .. } => None,
        }
    }

    /// May this identity change state, given the CSRF value the request carried?
    /// Tokens need no CSRF (a browser never attaches them by itself).
    pub fn csrf_ok(&self, presented: Option<&str>) -> bool {
        match (self, presented) {
            (Identity::Token { .. }, _) => true,
            (Identity::Session { session, .. }, Some(p)) => ct_eq(&session.csrf, p),
            (Identity::Session { .. }, None) => false,
        }
    }
}

/// Constant-time string comparison (lengths are not secret).
fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Sessions and tokens.
pub struct Auth {
    config: ConsoleConfig,
    sessions: Mutex<HashMap<String, Session>>,
    limiter: Mutex<RateLimiter>,
}

/// Result of a login attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginOutcome {
    /// Logged in; the new session id.
    Ok(String),
    /// Wrong user or password.
    Denied,
    /// Too many failures recently; try later.
    RateLimited,
}

impl Auth {
    /// New store for `config`.
    pub fn new(config: ConsoleConfig) -> Self {
        Auth {
            config,
            sessions: Mutex::new(HashMap::new()),
            limiter: Mutex::new(RateLimiter::default()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ConsoleConfig {
        &self.config
    }

    /// Try a login from `ip`. Rate limiting is checked before the password, so a limited
    /// client learns nothing and costs no Argon2 work.
    pub fn login(
        &self,
        ip: Option<IpAddr>,
        user: &str,
        password: &str,
        now: Instant,
    ) -> LoginOutcome {
        let limited = self.limiter.lock().expect("limiter lock").is_limited(
            ip,
            now,
            self.config.login_failures_per_ip_per_min_max,
            self.config.login_failures_global_per_min_max,
        );
        if limited {
            tracing::warn!(?ip, "console login rate-limited");
            return LoginOutcome::RateLimited;
        }
        let user_ok = ct_eq(user, &self.config.admin_user);
        // Verify even for a wrong user so timing does not reveal valid names.
        let pass_ok = !self.config.admin_password_argon2.is_empty()
            && crate::config::verify_password(password, &self.config.admin_password_argon2);
        if !(user_ok && pass_ok) {
            self.limiter
                .lock()
                .expect("limiter lock")
                .record_failure(ip, now);
            tracing::warn!(?ip, user, "console login failed");
            return LoginOutcome::Denied;
        }
        let id = random_hex(SESSION_ID_BYTES);
        let session = Session {
            user: user.to_string(),
            csrf: random_hex(SESSION_ID_BYTES),
            created: now,
            last_seen: now,
        };
        let mut sessions = self.sessions.lock().expect("sessions lock");
        self.expire_locked(&mut sessions, now);
        while sessions.len() >= self.config.sessions_max.max(1) {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => sessions.remove(&k),
                None => break,
            };
        }
        sessions.insert(id.clone(), session);
        tracing::info!(?ip, user, "console login");
        LoginOutcome::Ok(id)
    }

    /// End a session.
    pub fn logout(&self, id: &str) {
        self.sessions.lock().expect("sessions lock").remove(id);
    }

    /// Identify a request from its headers: bearer token first, then session cookie.
    /// Touches the session (idle timeout restarts).
    pub fn identify(&self, headers: &HeaderMap, now: Instant) -> Option<Identity> {
        if let Some(token) = bearer(headers) {
            return self.token_identity(token);
        }
        let id = cookie(headers, SESSION_COOKIE)?;
        let mut sessions = self.sessions.lock().expect("sessions lock");
        self.expire_locked(&mut sessions, now);
        let session = sessions.get_mut(id)?;
        session.last_seen = now;
        Some(Identity::Session {
            id: id.to_string(),
            session: session.clone(),
        })
    }

    fn token_identity(&self, token: &str) -> Option<Identity> {
        let presented = hash_token(token);
        // Compare against every token so timing does not reveal which one was close.
        let mut found = None;
        for t in &self.config.api_tokens {
            if ct_eq(&t.blake3_hex, &presented) {
                found = Some(t.name.clone());
            }
        }
        found.map(|name| Identity::Token { name })
    }

    fn expire_locked(&self, sessions: &mut HashMap<String, Session>, now: Instant) {
        let idle = Duration::from_secs(self.config.session_idle_s);
        let lifetime = Duration::from_secs(self.config.session_lifetime_s);
        sessions.retain(|_, s| {
            now.saturating_duration_since(s.last_seen) < idle
                && now.saturating_duration_since(s.created) < lifetime
        });
    }

    /// The `Set-Cookie` value for a new session.
    pub fn session_cookie(&self, id: &str) -> String {
        let secure = if self.config.cookie_secure {
            "; Secure"
        } else {
            ""
        };
        format!(
            "{SESSION_COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            self.config.session_lifetime_s
        )
    }

    /// The `Set-Cookie` value that clears the session cookie.
    pub fn clear_cookie(&self) -> String {
        let secure = if self.config.cookie_secure {
            "; Secure"
        } else {
            ""
        };
        format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
    }
}

/// The bearer token in `Authorization`, if any.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then_some(token)
}

/// The value of cookie `name` in the `Cookie` headers, if any.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Sliding one-minute windows of failed logins, per client address and global.
#[derive(Default)]
struct RateLimiter {
    per_ip: HashMap<Option<IpAddr>, VecDeque<Instant>>,
    global: VecDeque<Instant>,
}

impl RateLimiter {
    fn prune(window: &mut VecDeque<Instant>, now: Instant) {
        while window
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= LOGIN_WINDOW)
        {
            window.pop_front();
        }
    }

    fn is_limited(
        &mut self,
        ip: Option<IpAddr>,
        now: Instant,
        per_ip_max: u32,
        global_max: u32,
    ) -> bool {
        Self::prune(&mut self.global, now);
        if self.global.len() >= global_max as usize {
            return true;
        }
        match self.per_ip.get_mut(&ip) {
            Some(w) => {
                Self::prune(w, now);
                w.len() >= per_ip_max as usize
            }
            None => false,
        }
    }

    fn record_failure(&mut self, ip: Option<IpAddr>, now: Instant) {
        if self.per_ip.len() >= RATE_LIMIT_IPS_MAX && !self.per_ip.contains_key(&ip) {
            self.per_ip.retain(|_, w| {
                Self::prune(w, now);
                !w.is_empty()
            });
            if self.per_ip.len() >= RATE_LIMIT_IPS_MAX {
                self.per_ip.clear();
            }
        }
        self.per_ip.entry(ip).or_default().push_back(now);
        self.global.push_back(now);
        assert!(self.per_ip.len() <= RATE_LIMIT_IPS_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::hash_password;

    fn auth() -> Auth {
        Auth::new(ConsoleConfig {
            admin_password_argon2: hash_password("pw").unwrap(),
            session_idle_s: 10,
            session_lifetime_s: 100,
            ..ConsoleConfig::default()
        })
    }

    fn cookie_headers(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::header::COOKIE,
            format!("other=1; {SESSION_COOKIE}={id}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn session_expires_when_idle_and_at_lifetime() {
        let a = auth();
        let t0 = Instant::now();
        let LoginOutcome::Ok(id) = a.login(None, "admin", "pw", t0) else {
            panic!("login failed")
        };
        let h = cookie_headers(&id);
        // Used every 5 s it stays alive past the idle timeout...
        for i in 1..=19u64 {
            assert!(
                a.identify(&h, t0 + Duration::from_secs(5 * i)).is_some(),
                "i={i}"
            );
        }
        // ...but not past its lifetime.
        assert!(a.identify(&h, t0 + Duration::from_secs(101)).is_none());

        let LoginOutcome::Ok(id2) = a.login(None, "admin", "pw", t0) else {
            panic!("login failed")
        };
        assert!(a
            .identify(&cookie_headers(&id2), t0 + Duration::from_secs(11))
            .is_none());
    }

    #[test]
    fn rate_limit_per_ip_and_global() {
        let a = auth();
        let t0 = Instant::now();
        let ip1: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..5 {
            assert_eq!(a.login(Some(ip1), "admin", "x", t0), LoginOutcome::Denied);
        }
        // Even the right password is refused while limited.
        assert_eq!(
            a.login(Some(ip1), "admin", "pw", t0),
            LoginOutcome::RateLimited
        );
        // Another address is still fine.
        let ip2: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(matches!(
            a.login(Some(ip2), "admin", "pw", t0),
            LoginOutcome::Ok(_)
        ));
        // A minute later the window has passed.
        let t1 = t0 + LOGIN_WINDOW;
        assert!(matches!(
            a.login(Some(ip1), "admin", "pw", t1),
            LoginOutcome::Ok(_)
        ));
        // Global: 20 failures from many addresses block everyone.
        for i in 0..20u8 {
            let ip: IpAddr = format!("127.0.1.{i}").parse().unwrap();
            assert_eq!(a.login(Some(ip), "admin", "x", t1), LoginOutcome::Denied);
        }
        let ip3: IpAddr = "127.0.2.1".parse().unwrap();
        assert_eq!(
            a.login(Some(ip3), "admin", "pw", t1),
            LoginOutcome::RateLimited
        );
    }
}

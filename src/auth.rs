//! Identity and permissions.
//!
//! With `SWITCHYARD_JWT_SECRET` set, every session and REST call carries an HS256 JWT whose claims
//! say who the caller is and which rooms it may join and publish to. Without a secret the server
//! is in open mode: everything is allowed and identities are self-declared.
//!
//! Room patterns are globs: `*` matches any run of characters (including `:`), `?` one character.
//!
//! Watch tickets (docs/operations.md, "Browsers"): a browser cannot put a token in a header on
//! a WebSocket or an `EventSource`, and a token in a URL ends up in histories and proxy logs. So
//! a caller that may see an operation trades its token for a ticket (`POST
//! /api/operations/{id}/ticket`): signed here, statelessly, so any node of a cluster accepts
//! it; good for one operation, read-only, and only for `SWITCHYARD_WATCH_TICKET_TTL_SECS`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error_code::{ErrorCode, Refusal};

/// The claims Switchyard reads from a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Glob patterns of rooms the user may join.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Glob patterns of rooms the user may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// `admin`, `service`, or absent for a plain user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Expiry, seconds since the epoch. Checked when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    /// Not before, seconds since the epoch: a token issued for later is refused until then.
    /// Checked when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// May do everything.
    Admin,
    /// May publish anywhere and post activities (and report operation progress).
    Service,
    /// May join and publish where its patterns say.
    User,
}

/// Who a user is, as other members see it in presence lists and `from` fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct UserInfo {
    #[serde(rename = "user")]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An authenticated (or, in open mode, self-declared) caller and what it may do.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: Arc<UserInfo>,
    pub role: Role,
    rooms: Vec<String>,
    publish: Vec<String>,
    /// Open mode: every check passes.
    open: bool,
    /// Token expiry (seconds since the epoch), if any.
    pub expires_at: Option<u64>,
}

impl Identity {
    /// The identity of a caller in open mode.
    pub fn open(id: String, name: Option<String>) -> Self {
        Self {
            user: Arc::new(UserInfo { id, name }),
            role: Role::Admin,
            rooms: Vec::new(),
            publish: Vec::new(),
            open: true,
            expires_at: None,
        }
    }

    /// A verified identity with no grants, for unit tests.
    #[cfg(test)]
    pub fn verified_for_tests(id: &str) -> Self {
        Self {
            open: false,
            role: Role::User,
            ..Self::open(id.into(), None)
        }
    }

    fn from_claims(c: Claims) -> Self {
        let role = match c.role.as_deref() {
            Some("admin") => Role::Admin,
            Some("service") => Role::Service,
            _ => Role::User,
        };
        Self {
            user: Arc::new(UserInfo {
                id: c.sub,
                name: c.name,
            }),
            role,
            rooms: c.rooms,
            publish: c.publish,
            open: false,
            expires_at: c.exp,
        }
    }

    /// The identity an app's backend gave a connection (the `connect` hook, src/hooks.rs): a
    /// plain user with the backend's patterns, as a token with these claims would give. Never
    /// a role: a backend that wants one signs a token instead.
    pub fn from_backend(
        id: String,
        name: Option<String>,
        rooms: Vec<String>,
        publish: Vec<String>,
    ) -> Self {
        Self {
            user: Arc::new(UserInfo { id, name }),
            role: Role::User,
            rooms,
            publish,
            open: false,
            expires_at: None,
        }
    }

    /// The identity a watch ticket gives: its holder, who may see `operation:<operation>` and
    /// nothing else (no role, no publish rights: a ticket is read-only).
    fn watching(user: UserInfo, operation: &str) -> Self {
        Self {
            user: Arc::new(user),
            role: Role::User,
            rooms: vec![format!("operation:{operation}")],
            publish: Vec::new(),
            open: false,
            expires_at: None,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    pub fn may_join(&self, room: &str) -> bool {
        self.open || self.role == Role::Admin || self.rooms.iter().any(|p| glob_match(p, room))
    }

    pub fn may_publish(&self, room: &str) -> bool {
        self.open
            || matches!(self.role, Role::Admin | Role::Service)
            || self.publish.iter().any(|p| glob_match(p, room))
    }

    /// Posting activities is for services (and admins).
    pub fn may_post_activity(&self) -> bool {
        self.open || matches!(self.role, Role::Admin | Role::Service)
    }

    /// Starting and cancelling operations: admins, services, and users who may publish to
    /// `operations` or to the operation's project room.
    pub fn may_operate(&self, project: Option<&str>) -> bool {
        self.open
            || matches!(self.role, Role::Admin | Role::Service)
            || self.may_publish("operations")
            || project.is_some_and(|p| self.may_publish(&format!("project:{p}")))
    }

    /// Seeing an operation: its own room, the `operations` room, or its project's room.
    pub fn may_watch(&self, operation_id: &str, project: Option<&str>) -> bool {
        self.may_see_all_operations()
            || self.may_join(&format!("operation:{operation_id}"))
            || project.is_some_and(|p| self.may_join(&format!("project:{p}")))
    }

    /// Seeing (and listing) every operation: whoever may join `operations`, and services — an
    /// app's backend starts, cancels and reports for any operation, so it reads them too (a
    /// `service` token without `rooms` used to start an operation and then get 404 for it).
    pub fn may_see_all_operations(&self) -> bool {
        self.role == Role::Service || self.may_join("operations")
    }

    /// Reporting progress as an external worker.
    pub fn may_report(&self) -> bool {
        self.open || matches!(self.role, Role::Admin | Role::Service)
    }

    /// Server-wide management views (the room list) are for admins.
    pub fn may_manage(&self) -> bool {
        self.open || self.role == Role::Admin
    }

    pub fn require(&self, allowed: bool, what: &str) -> Result<(), Refusal> {
        if allowed {
            Ok(())
        } else {
            Err(Refusal::new(
                ErrorCode::Forbidden,
                format!("user {} may not {what}", self.user.id),
            ))
        }
    }
}

/// Verifies tokens, and signs and verifies watch tickets. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    inner: Option<Arc<Keys>>,
    /// The watch tickets' key: derived from the JWT secret (every node of a cluster derives the
    /// same), or random in open mode (where tickets are issued so clients need no special case,
    /// and ignored, since everything is allowed anyway).
    tickets: Arc<TicketKeys>,
}

struct Keys {
    decoding: DecodingKey,
    validation: Validation,
}

struct TicketKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

/// What a watch ticket says. `typ` keeps it apart from anything else signed with this key.
#[derive(Debug, Serialize, Deserialize)]
struct TicketClaims {
    typ: String,
    /// The one operation it opens.
    op: String,
    /// Who asked for it: the watcher's user in the room's member list.
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    /// Expiry, seconds since the epoch (required).
    exp: u64,
}

const TICKET_TYPE: &str = "watch";

/// A ticket's key is not the JWT secret itself but an HMAC of it with this label, so a ticket
/// never verifies as a token (nor a token as a ticket), whatever claims either carries.
const TICKET_KEY_LABEL: &[u8] = b"switchyard watch ticket v1";

fn ticket_keys(secret: Option<&str>) -> TicketKeys {
    let key: Vec<u8> = match secret {
        Some(s) => match Hmac::<sha2::Sha256>::new_from_slice(s.as_bytes()) {
            Ok(mut mac) => {
                mac.update(TICKET_KEY_LABEL);
                mac.finalize().into_bytes().to_vec()
            }
            // HMAC takes a key of any length; kept total rather than unwrapped.
            Err(_) => rand::random::<[u8; 32]>().to_vec(),
        },
        None => rand::random::<[u8; 32]>().to_vec(),
    };
    let mut validation = Validation::new(Algorithm::HS256);
    validation.required_spec_claims = ["exp".to_string()].into_iter().collect();
    // A ticket lives seconds: no leeway beyond its TTL (the issuing node's clock is the one
    // that matters, and a cluster's nodes are assumed to agree to the second).
    validation.leeway = 0;
    TicketKeys {
        encoding: EncodingKey::from_secret(&key),
        decoding: DecodingKey::from_secret(&key),
        validation,
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A watch ticket and when it stops opening streams (seconds since the epoch).
#[derive(Debug, Clone)]
pub struct Ticket {
    pub ticket: String,
    pub expires_at: u64,
}

impl Authenticator {
    pub fn new(secret: Option<&str>) -> Self {
        let inner = secret.map(|s| {
            let mut validation = Validation::new(Algorithm::HS256);
            // `exp` is checked when present; tokens for long-lived services may omit it.
            validation.required_spec_claims.clear();
            // `nbf` too (jsonwebtoken leaves it unchecked by default): a token minted for later
            // must not open a session now.
            validation.validate_nbf = true;
            validation.leeway = 5;
            Arc::new(Keys {
                decoding: DecodingKey::from_secret(s.as_bytes()),
                validation,
            })
        });
        Self {
            inner,
            tickets: Arc::new(ticket_keys(secret)),
        }
    }

    /// A ticket for `identity` to watch `operation` for `ttl` (the route checked that it may).
    pub fn issue_ticket(
        &self,
        identity: &Identity,
        operation: &str,
        ttl: Duration,
    ) -> Result<Ticket, Refusal> {
        let expires_at = now_secs() + ttl.as_secs().max(1);
        let claims = TicketClaims {
            typ: TICKET_TYPE.into(),
            op: operation.to_string(),
            sub: identity.user.id.clone(),
            name: identity.user.name.clone(),
            exp: expires_at,
        };
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.tickets.encoding,
        )
        .map(|ticket| Ticket { ticket, expires_at })
        .map_err(|_| Refusal::new(ErrorCode::Internal, "could not sign a ticket"))
    }

    /// The identity a ticket gives for watching `operation`: refused `invalid_ticket` when it
    /// does not verify, has expired, or is for another operation (the message never says
    /// whether that one exists, nor echoes the ticket).
    pub fn verify_ticket(&self, ticket: &str, operation: &str) -> Result<Identity, Refusal> {
        let claims = match decode::<TicketClaims>(
            ticket,
            &self.tickets.decoding,
            &self.tickets.validation,
        ) {
            Ok(data) => data.claims,
            Err(e) => {
                let message = match e.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                        "ticket has expired; ask for a new one"
                    }
                    _ => "ticket is not valid",
                };
                return Err(Refusal::new(ErrorCode::InvalidTicket, message));
            }
        };
        if claims.typ != TICKET_TYPE || claims.sub.is_empty() {
            return Err(Refusal::new(
                ErrorCode::InvalidTicket,
                "ticket is not valid",
            ));
        }
        if claims.op != operation {
            return Err(Refusal::new(
                ErrorCode::InvalidTicket,
                "ticket is for another operation",
            ));
        }
        let user = UserInfo {
            id: claims.sub,
            name: claims.name,
        };
        Ok(Identity::watching(user, operation))
    }

    pub fn open_mode(&self) -> bool {
        self.inner.is_none()
    }

    /// Verifies a token. In open mode any token is refused: there is nothing to verify it with.
    pub fn verify(&self, token: &str) -> Result<Identity, Refusal> {
        let Some(keys) = &self.inner else {
            return Err(Refusal::new(
                ErrorCode::InvalidToken,
                "this server runs in open mode and does not verify tokens",
            ));
        };
        match decode::<Claims>(token, &keys.decoding, &keys.validation) {
            Ok(data) => {
                if data.claims.sub.is_empty() || data.claims.sub.len() > 256 {
                    return Err(Refusal::new(
                        ErrorCode::InvalidToken,
                        "token claim `sub` must be 1-256 characters",
                    ));
                }
                Ok(Identity::from_claims(data.claims))
            }
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    Err(Refusal::new(ErrorCode::TokenExpired, "token has expired"))
                }
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => Err(Refusal::new(
                    ErrorCode::InvalidToken,
                    "token is not valid yet (`nbf` is in the future)",
                )),
                // Never echo the token or the library's detail (it can quote claims).
                _ => Err(Refusal::new(ErrorCode::InvalidToken, "token is not valid")),
            },
        }
    }

    /// Reads `Authorization: Bearer <token>`. `Ok(None)` when the header is absent.
    pub fn from_header(&self, header: Option<&str>) -> Result<Option<Identity>, Refusal> {
        let Some(h) = header else { return Ok(None) };
        let token = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
            .ok_or_else(|| {
                Refusal::new(
                    ErrorCode::InvalidToken,
                    "Authorization header must be `Bearer <token>`",
                )
            })?;
        if self.open_mode() {
            // Open mode accepts (and ignores) tokens so clients need no special case.
            return Ok(None);
        }
        self.verify(token.trim()).map(Some)
    }
}

/// Signs a token (the `switchyard token` command and tests).
pub fn sign(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Glob match with `*` (any run, possibly empty) and `?` (one character). Iterative with
/// single-star backtracking: linear in practice, never exponential.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_room_names() {
        assert!(glob_match("project:*", "project:42"));
        assert!(glob_match("*", "anything:at:all"));
        assert!(glob_match("operation:?", "operation:7"));
        assert!(!glob_match("operation:?", "operation:77"));
        assert!(!glob_match("project:*", "projects:1"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("project:42", "project:42"));
        assert!(!glob_match("project:4", "project:42"));
    }

    #[test]
    fn tokens_round_trip_and_expired_ones_are_refused() {
        let auth = Authenticator::new(Some("secret-for-tests"));
        let claims = Claims {
            sub: "alice".into(),
            rooms: vec!["project:*".into()],
            ..Default::default()
        };
        let token = sign("secret-for-tests", &claims).unwrap();
        let id = auth.verify(&token).unwrap();
        assert_eq!(id.user.id, "alice");
        assert!(id.may_join("project:1"));
        assert!(!id.may_join("system"));
        assert!(!id.may_publish("project:1"));

        let expired = Claims {
            exp: Some(1),
            ..claims.clone()
        };
        let token = sign("secret-for-tests", &expired).unwrap();
        assert_eq!(
            auth.verify(&token).unwrap_err().code,
            ErrorCode::TokenExpired
        );

        // Minted for an hour from now: refused until then (past the 5 s leeway).
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let early = Claims {
            nbf: Some(now + 3600),
            ..claims.clone()
        };
        let token = sign("secret-for-tests", &early).unwrap();
        let err = auth.verify(&token).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidToken);
        assert!(err.message.contains("nbf"), "{}", err.message);
        let due = Claims {
            nbf: Some(now - 10),
            ..claims.clone()
        };
        assert!(auth
            .verify(&sign("secret-for-tests", &due).unwrap())
            .is_ok());

        let forged = sign("other-secret", &claims).unwrap();
        let err = auth.verify(&forged).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidToken);
        assert!(!err.message.contains(&forged));
    }

    #[test]
    fn tickets_open_one_operation_until_they_expire_and_are_not_tokens() {
        let auth = Authenticator::new(Some("k"));
        let alice = auth
            .verify(
                &sign(
                    "k",
                    &Claims {
                        sub: "alice".into(),
                        rooms: vec!["project:*".into()],
                        publish: vec!["project:*".into()],
                        ..Default::default()
                    },
                )
                .unwrap(),
            )
            .unwrap();
        let t = auth
            .issue_ticket(&alice, "op1", Duration::from_secs(60))
            .unwrap();
        assert!(t.expires_at >= now_secs() + 59);
        let id = auth.verify_ticket(&t.ticket, "op1").unwrap();
        assert_eq!(id.user.id, "alice");
        assert!(id.may_watch("op1", None));
        // Scoped and read-only: not the token's other rights.
        assert!(!id.may_watch("op2", Some("1")));
        assert!(!id.may_publish("operation:op1"));
        assert!(!id.may_operate(None));
        let other = auth.verify_ticket(&t.ticket, "op2").unwrap_err();
        assert_eq!(other.code, ErrorCode::InvalidTicket);
        // A ticket is no token, a token no ticket, and another secret's ticket nothing.
        assert_eq!(
            auth.verify(&t.ticket).unwrap_err().code,
            ErrorCode::InvalidToken
        );
        let token = sign(
            "k",
            &Claims {
                sub: "alice".into(),
                exp: Some(now_secs() + 60),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            auth.verify_ticket(&token, "op1").unwrap_err().code,
            ErrorCode::InvalidTicket
        );
        let elsewhere = Authenticator::new(Some("other"))
            .issue_ticket(&alice, "op1", Duration::from_secs(60))
            .unwrap();
        let err = auth.verify_ticket(&elsewhere.ticket, "op1").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidTicket);
        assert!(!err.message.contains(&elsewhere.ticket));
        // Expired: signed with an `exp` in the past.
        let old = encode(
            &Header::new(Algorithm::HS256),
            &TicketClaims {
                typ: TICKET_TYPE.into(),
                op: "op1".into(),
                sub: "alice".into(),
                name: None,
                exp: now_secs() - 1,
            },
            &auth.tickets.encoding,
        )
        .unwrap();
        let err = auth.verify_ticket(&old, "op1").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidTicket);
        assert!(err.message.contains("expired"), "{}", err.message);
    }

    #[test]
    fn roles_widen_permissions() {
        let auth = Authenticator::new(Some("k"));
        let svc = auth
            .verify(
                &sign(
                    "k",
                    &Claims {
                        sub: "svc".into(),
                        role: Some("service".into()),
                        ..Default::default()
                    },
                )
                .unwrap(),
            )
            .unwrap();
        assert!(svc.may_publish("project:9"));
        assert!(svc.may_post_activity());
        assert!(!svc.may_join("project:9"));
    }
}

//! Bearer tokens and their scopes (CONTRACT.md §4, §10): `read` (status,
//! events), `call` (module and process calls), `admin` (everything), and
//! `cluster` (the token members of a cluster share: builds and the node-to-node
//! methods, nothing else). Tokens are compared in constant time, through their
//! sha256 so lengths leak nothing either.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::wire::Code;

/// Where a token comes from, and what it may do.
#[derive(Debug, Clone)]
pub enum TokenSource {
    File {
        path: PathBuf,
        scopes: Vec<Scope>,
    },
    /// `--token T`: an admin token given on the command line.
    Inline(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Read,
    Call,
    Admin,
    Cluster,
}

impl Scope {
    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "read" => Some(Scope::Read),
            "call" => Some(Scope::Call),
            "admin" => Some(Scope::Admin),
            "cluster" => Some(Scope::Cluster),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Call => "call",
            Scope::Admin => "admin",
            Scope::Cluster => "cluster",
        }
    }
}

/// Who is asking: the scopes of the token a request presented (`None`: no
/// token, or one the node does not know). Set on every HTTP request and
/// WebSocket connection by the gate, read by every method.
#[derive(Debug, Clone, Default)]
pub struct Caller(pub Option<Vec<Scope>>);

impl Caller {
    /// `Err` is `Unauthorized` (no known token) or `Forbidden` (lacks the scope).
    pub fn check(&self, needed: Scope) -> Result<(), Code> {
        match &self.0 {
            None => Err(Code::Unauthorized),
            Some(scopes) if scopes.contains(&Scope::Admin) || scopes.contains(&needed) => Ok(()),
            Some(_) => Err(Code::Forbidden),
        }
    }
}

#[derive(Debug)]
pub struct Tokens {
    known: Vec<([u8; 32], Vec<Scope>)>,
}

impl Tokens {
    /// Reads every configured token. With none configured, the node's own admin
    /// token: `<data_dir>/admin.token`, created (mode 0600) when missing. The
    /// cluster's shared token (scope `cluster` only) is known besides them; it
    /// does not count as a configured client token.
    pub fn load(
        sources: &[TokenSource],
        cluster: Option<&str>,
        data_dir: &Path,
    ) -> Result<(Tokens, Option<PathBuf>), String> {
        let mut known = Vec::new();
        let cluster = cluster.map(|token| (digest(token), vec![Scope::Cluster]));
        for source in sources {
            match source {
                TokenSource::File { path, scopes } => {
                    let token = read_token(path)?;
                    known.push((digest(&token), scopes.clone()));
                }
                TokenSource::Inline(token) => known.push((digest(token), vec![Scope::Admin])),
            }
        }
        if !known.is_empty() {
            known.extend(cluster);
            return Ok((Tokens { known }, None));
        }
        let path = data_dir.join("admin.token");
        let token = match read_token(&path) {
            Ok(token) => token,
            Err(_) if !path.exists() => create_admin_token(&path)?,
            Err(err) => return Err(err),
        };
        known.push((digest(&token), vec![Scope::Admin]));
        known.extend(cluster);
        Ok((Tokens { known }, Some(path)))
    }

    pub fn caller(&self, presented: Option<&str>) -> Caller {
        let Some(token) = presented else {
            return Caller(None);
        };
        let presented = digest(token);
        // Every known token is compared, whichever matches, so timing says nothing.
        let mut found = None;
        for (known, scopes) in &self.known {
            if bool::from(known.ct_eq(&presented)) {
                found = Some(scopes.clone());
            }
        }
        Caller(found)
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn read_token(path: &Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|err| format!("cannot read the token file {}: {err}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("the token file {} is empty", path.display()));
    }
    Ok(token.to_string())
}

fn create_admin_token(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |err: std::io::Error| format!("cannot create the admin token {}: {err}", path.display());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| format!("no randomness for the admin token: {err}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(fail)?;
    file.write_all(format!("{token}\n").as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    Ok(token)
}

/// The token in an `Authorization: Bearer <token>` header value.
pub fn bearer(header: Option<&http::HeaderValue>) -> Option<&str> {
    let value = header?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_admin_token_is_created_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (tokens, created) = Tokens::load(&[], None, dir.path()).unwrap();
        let path = created.unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let token = std::fs::read_to_string(&path).unwrap().trim().to_string();
        assert_eq!(tokens.caller(Some(&token)).check(Scope::Admin), Ok(()));
        assert_eq!(tokens.caller(Some("nope")).check(Scope::Read), Err(Code::Unauthorized));
        assert_eq!(tokens.caller(None).check(Scope::Read), Err(Code::Unauthorized));
        let (again, _) = Tokens::load(&[], None, dir.path()).unwrap();
        assert_eq!(again.caller(Some(&token)).check(Scope::Call), Ok(()), "the same token after a restart");
    }

    #[test]
    fn scopes_limit_what_a_token_may_do() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("r"), "reader\n").unwrap();
        let sources = [TokenSource::File { path: dir.path().join("r"), scopes: vec![Scope::Read] }];
        let (tokens, created) = Tokens::load(&sources, None, dir.path()).unwrap();
        assert!(created.is_none(), "no admin token is made when tokens are configured");
        let reader = tokens.caller(Some("reader"));
        assert_eq!((reader.check(Scope::Read), reader.check(Scope::Call)), (Ok(()), Err(Code::Forbidden)));
        let header = http::HeaderValue::from_static("Bearer abc");
        assert_eq!(bearer(Some(&header)), Some("abc"));
        assert_eq!(bearer(Some(&http::HeaderValue::from_static("Basic abc"))), None);
    }

    #[test]
    fn the_cluster_token_reaches_cluster_methods_only_and_an_admin_token_is_still_made() {
        let dir = tempfile::tempdir().unwrap();
        let (tokens, created) = Tokens::load(&[], Some("shared-secret"), dir.path()).unwrap();
        assert!(created.is_some(), "the cluster token is not a client token: the admin token is made");
        let peer = tokens.caller(Some("shared-secret"));
        assert_eq!(peer.check(Scope::Cluster), Ok(()));
        for scope in [Scope::Read, Scope::Call, Scope::Admin] {
            assert_eq!(peer.check(scope), Err(Code::Forbidden), "{scope:?}");
        }
        let admin = std::fs::read_to_string(created.unwrap()).unwrap();
        assert_eq!(tokens.caller(Some(admin.trim())).check(Scope::Cluster), Ok(()), "admin implies cluster");
    }
}

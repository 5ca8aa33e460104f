//! Talking to other members with the cluster's shared token: the node-to-node
//! JSON-RPC methods (`cluster.prepare`, `cluster.commit`, `cluster.settle`,
//! `cluster.abort`) and fetching builds (`GET /artifacts/<sha256>`).
//!
//! A build is fetched from the first source that has it, and kept only if its
//! bytes hash to the sha256 asked for: a source that serves other bytes is
//! `artifact_mismatch`, and the next source is tried.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use jsonrpsee::core::client::{ClientT, Error as ClientError};
use jsonrpsee::core::traits::ToRpcParams;
use jsonrpsee::http_client::{HttpClient, HttpClientBuilder};
use serde_json::value::RawValue;
use serde_json::Value;
use sha2::{Digest, Sha256};
use zest_runtime::{Bytes, Failure, Reason};

/// The largest build a member accepts from another.
const MAX_BUILD_BYTES: u64 = 1 << 30;

/// How long one fetch of a build may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a call to another member failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerError {
    /// No answer: refused, reset, or silent past the timeout.
    Unreachable(String),
    /// It answered with a JSON-RPC error.
    Refused(String),
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerError::Unreachable(message) | PeerError::Refused(message) => f.write_str(message),
        }
    }
}

/// Parameters serialized before the call.
struct Raw(Box<RawValue>);

impl ToRpcParams for Raw {
    fn to_rpc_params(self) -> Result<Option<Box<RawValue>>, serde_json::Error> {
        Ok(Some(self.0))
    }
}

/// Clients of the other members, one per address (kept, so requests reuse
/// their connections).
pub struct Peers {
    token: String,
    clients: Mutex<HashMap<String, HttpClient>>,
}

impl std::fmt::Debug for Peers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peers").finish_non_exhaustive()
    }
}

impl Peers {
    pub fn new(token: String) -> Peers {
        Peers { token, clients: Mutex::new(HashMap::new()) }
    }

    fn client(&self, url: &str) -> Result<HttpClient, PeerError> {
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(client) = clients.get(url) {
            return Ok(client.clone());
        }
        let mut headers = http::HeaderMap::new();
        let bearer = http::HeaderValue::from_str(&format!("Bearer {}", self.token))
            .map_err(|_| PeerError::Refused("the cluster token is not a valid header value".into()))?;
        headers.insert(http::header::AUTHORIZATION, bearer);
        let client = HttpClientBuilder::default()
            .set_headers(headers)
            .request_timeout(Duration::from_secs(24 * 3600))
            .max_response_size(u32::MAX)
            .build(url)
            .map_err(|err| PeerError::Unreachable(format!("{url}: {err}")))?;
        clients.insert(url.to_string(), client.clone());
        Ok(client)
    }

    /// Calls `method` on the member at `url` with `params` (an object), waiting
    /// at most `timeout` for the answer.
    pub async fn call(&self, url: &str, method: &str, params: Value, timeout: Duration) -> Result<Value, PeerError> {
        let params = serde_json::value::to_raw_value(&params).map_err(|err| PeerError::Refused(err.to_string()))?;
        self.call_raw(url, method, params, timeout).await
    }

    /// As [`Peers::call`], with `params` serialized already (a JSON object).
    pub async fn call_raw(
        &self,
        url: &str,
        method: &str,
        params: Box<RawValue>,
        timeout: Duration,
    ) -> Result<Value, PeerError> {
        let client = self.client(url)?;
        match tokio::time::timeout(timeout, client.request::<Value, _>(method, Raw(params))).await {
            Err(_) => Err(PeerError::Unreachable(format!("no answer from {url} within {} ms", timeout.as_millis()))),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(ClientError::Call(error))) => Err(PeerError::Refused(error.message().to_string())),
            Ok(Err(err)) => Err(PeerError::Unreachable(format!("{url}: {err}"))),
        }
    }

    /// Fetches the build `sha256` from the first of `sources` (member
    /// addresses) that serves bytes hashing to it. Blocks: call it from a
    /// blocking thread.
    pub fn fetch(&self, module: &str, sha256: &str, sources: &[String]) -> Result<Bytes, Failure> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(FETCH_TIMEOUT))
            .http_status_as_error(false)
            .build()
            .into();
        let mut problems = Vec::new();
        let mut mismatch = false;
        for source in sources {
            let url = format!("{}/artifacts/{sha256}", source.trim_end_matches('/'));
            let response = agent.get(&url).header("authorization", &format!("Bearer {}", self.token)).call();
            let mut response = match response {
                Ok(response) => response,
                Err(err) => {
                    problems.push(format!("{url}: {err}"));
                    continue;
                }
            };
            if response.status() != 200 {
                problems.push(format!("{url}: HTTP {}", response.status().as_u16()));
                continue;
            }
            let bytes = match response.body_mut().with_config().limit(MAX_BUILD_BYTES).read_to_vec() {
                Ok(bytes) => bytes,
                Err(err) => {
                    problems.push(format!("{url}: {err}"));
                    continue;
                }
            };
            let got = hex::encode(Sha256::digest(&bytes));
            if got != sha256 {
                mismatch = true;
                problems.push(format!("{url} served bytes whose sha256 is {got}"));
                continue;
            }
            return Ok(bytes.into());
        }
        let reason = if mismatch { Reason::ArtifactMismatch } else { Reason::PrepareFailed };
        let tried = if problems.is_empty() { "no member to fetch it from".to_string() } else { problems.join("; ") };
        Err(Failure::new(module, reason, format!("cannot fetch build {sha256} of `{module}`: {tried}")))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    /// A one-route HTTP server answering every request with `body`; its address.
    fn serving(body: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body);
            }
        });
        format!("http://{addr}")
    }

    #[test]
    fn bytes_that_do_not_hash_to_the_build_are_refused_and_the_next_source_is_tried() {
        let wanted = b"(module)";
        let sha256 = hex::encode(Sha256::digest(wanted));
        let liar = serving(b"(module $evil)");
        let honest = serving(wanted);
        let peers = Peers::new("token".into());

        let refused = peers.fetch("clock", &sha256, std::slice::from_ref(&liar)).unwrap_err();
        assert_eq!(refused.reason, Reason::ArtifactMismatch);
        assert!(refused.message.contains("served bytes whose sha256 is"), "{}", refused.message);

        let fetched = peers.fetch("clock", &sha256, &[liar, honest]).unwrap();
        assert_eq!(&fetched[..], wanted);

        let nobody = peers.fetch("clock", &sha256, &[]).unwrap_err();
        assert_eq!(nobody.reason, Reason::PrepareFailed);
    }
}

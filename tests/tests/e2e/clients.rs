//! Clients the tests drive by hand where reqwest cannot: a TLS handshake
//! with openssl (SNI, ALPN and verification chosen per call, the served
//! leaf inspected), HTTP/1.1 written and read by hand over any stream, and
//! the `curl` binary for HTTP/2.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use openssl::hash::MessageDigest;
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode};
use openssl::x509::X509;
use serde_json::Value;

use crate::support::TestCa;

/// A TLS handshake with `addr`: SNI `sni` (none if `None`); with
/// `verify`, the chain is verified against the test CA and the leaf
/// against that name, else nothing is verified; `alpn` offered if not
/// empty. The TCP connection must succeed: an `Err` is the handshake's.
pub(crate) fn handshake(
    addr: SocketAddr,
    ca: &TestCa,
    sni: Option<&str>,
    verify: Option<&str>,
    alpn: &[&str],
) -> Result<SslStream<TcpStream>, String> {
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("TCP connection to the TLS listener {addr}: {e}"));
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
    builder.set_ca_file(&ca.ca_pem_path).unwrap();
    if verify.is_none() {
        builder.set_verify(SslVerifyMode::NONE);
    }
    if !alpn.is_empty() {
        let mut wire = Vec::new();
        for protocol in alpn {
            wire.push(protocol.len() as u8);
            wire.extend_from_slice(protocol.as_bytes());
        }
        builder.set_alpn_protos(&wire).unwrap();
    }
    let mut config = builder.build().configure().unwrap();
    config.set_verify_hostname(false);
    config.set_use_server_name_indication(sni.is_some());
    let mut ssl = config.into_ssl(sni.unwrap_or("no-sni.invalid")).unwrap();
    if let Some(name) = verify {
        ssl.param_mut().set_host(name).unwrap();
    }
    ssl.connect(tcp).map_err(|e| e.to_string())
}

/// The leaf the server presented.
pub(crate) fn peer_leaf(stream: &SslStream<TcpStream>) -> X509 {
    stream
        .ssl()
        .peer_certificate()
        .expect("the server presented a certificate")
}

/// The DNS names of a certificate's subject alternative names.
pub(crate) fn dns_names(cert: &X509) -> Vec<String> {
    cert.subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.dnsname().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) fn fingerprint(cert: &X509) -> Vec<u8> {
    cert.digest(MessageDigest::sha256()).unwrap().to_vec()
}

/// The SANs of the leaf served for `sni` (verified against `verify`, if
/// given); panics if the handshake fails.
pub(crate) fn served_names(
    addr: SocketAddr,
    ca: &TestCa,
    sni: Option<&str>,
    verify: Option<&str>,
) -> Vec<String> {
    match handshake(addr, ca, sni, verify, &[]) {
        Ok(stream) => dns_names(&peer_leaf(&stream)),
        Err(e) => {
            let served =
                handshake(addr, ca, sni, None, &[]).map(|stream| dns_names(&peer_leaf(&stream)));
            panic!(
                "handshake with SNI {sni:?}, verifying {verify:?}: {e}\n\
                 (without verification: {served:?})"
            )
        }
    }
}

/// An HTTP response: status, headers (names lowercase) and body.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The upstream's JSON echo in the body.
    pub(crate) fn echo(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not an upstream echo ({e}): {self:?}"))
    }
}

/// Status line and header lines (CRLF separated) of an HTTP/1.x or curl
/// `--dump-header` head.
pub(crate) fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A chunked body, if all of it is in `data`.
pub(crate) fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let end = find(data, b"\r\n")?;
        let size = std::str::from_utf8(&data[..end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        data = &data[end + 2..];
        if size == 0 {
            return Some(body);
        }
        if data.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// The response in `raw`, if complete (`eof`: nothing more will come).
pub(crate) fn complete_response(raw: &[u8], eof: bool) -> Option<Reply> {
    let end = find(raw, b"\r\n\r\n")?;
    let (status, headers) = parse_head(&String::from_utf8_lossy(&raw[..end]));
    let rest = &raw[end + 4..];
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let body = if let Some(length) = header("content-length") {
        let length: usize = length.parse().ok()?;
        rest.get(..length)?.to_vec()
    } else if header("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
        dechunk(rest)?
    } else if eof {
        rest.to_vec()
    } else {
        return None;
    };
    Some(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// One HTTP/1.1 GET (`Connection: close`) over `stream`.
pub(crate) fn http1_get<S: Read + Write>(
    stream: &mut S,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let eof = match stream.read(&mut buf) {
            Ok(0) => true,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                false
            }
            // A close without close_notify once the response is in.
            Err(_) if !raw.is_empty() => true,
            Err(e) => panic!("reading the response to GET {path} (Host {host}): {e}"),
        };
        if let Some(reply) = complete_response(&raw, eof) {
            return reply;
        }
        assert!(
            !eof,
            "incomplete response: {:?}",
            String::from_utf8_lossy(&raw)
        );
    }
}

/// GET `path` with Host `host` over a new TLS connection with SNI `host`,
/// verified against `host`.
pub(crate) fn https_get(addr: SocketAddr, ca: &TestCa, host: &str, path: &str) -> Reply {
    let mut stream = handshake(addr, ca, Some(host), Some(host), &[])
        .unwrap_or_else(|e| panic!("handshake for {host}: {e}"));
    http1_get(&mut stream, host, path, &[])
}

/// Runs `curl` with `args` (plus quiet output, a 10 s limit, no proxy,
/// headers dumped and the HTTP version written last); the version it
/// used (`2`, `1.1`) and the response, or why it failed.
pub(crate) fn curl(args: &[&str]) -> Result<(String, Reply), String> {
    let output = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10"])
        .args(["--noproxy", "*", "--dump-header", "-"])
        .args(["--write-out", "\n%{http_version}"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("running curl (.ci/run installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        return Err(format!(
            "curl {args:?}: {}: {} (output {stdout:?})",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let (rest, version) = stdout
        .rsplit_once('\n')
        .ok_or_else(|| format!("curl output without a version: {stdout:?}"))?;
    let (head, body) = rest
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("curl output without headers: {stdout:?}"))?;
    let (status, headers) = parse_head(head);
    let reply = Reply {
        status,
        headers,
        body: body.to_string(),
    };
    Ok((version.trim().to_string(), reply))
}

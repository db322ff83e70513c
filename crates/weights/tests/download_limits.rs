//! A server that trickles bytes is given up by the deadline or the minimum rate, and the download
//! resumes from what was kept.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use sha2::Digest;
use slimflow_weights::{download_with, Checksum, DownloadLimits};

/// Serves `body` on 127.0.0.1: the first `trickled` requests get one byte every `gap` (never the
/// whole body), later ones the rest at once, honouring `Range`.
fn serve(body: Vec<u8>, trickled: usize, gap: Duration) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { continue };
            let body = body.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut from = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("range: bytes=") {
                        from = v.trim().trim_end_matches('-').parse().unwrap_or(0);
                    }
                }
                let rest = &body[from.min(body.len())..];
                let status = if from > 0 {
                    "206 Partial Content"
                } else {
                    "200 OK"
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    rest.len()
                );
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                if i < trickled {
                    for b in rest.iter().take(rest.len() - 1) {
                        std::thread::sleep(gap);
                        if stream
                            .write_all(&[*b])
                            .and_then(|_| stream.flush())
                            .is_err()
                        {
                            return;
                        }
                    }
                } else {
                    let _ = stream.write_all(rest);
                }
            });
        }
    });
    base
}

#[test]
fn a_trickling_server_is_given_up_by_the_minimum_rate_and_the_download_resumes() {
    let body: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let digest: &'static str = Box::leak(hex::encode(sha2::Sha256::digest(&body)).into_boxed_str());
    let base = serve(body.clone(), 1, Duration::from_millis(50));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("w.pth");
    let limits = DownloadLimits {
        deadline: Duration::from_secs(30),
        min_rate: 1000.0,
        window: Duration::from_millis(500),
    };
    let url = format!("{base}/w.pth");
    let t = Instant::now();
    let err = download_with(&url, &dest, Checksum::Sha256(digest), false, &limits)
        .unwrap_err()
        .to_string();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(
        err.contains("below the minimum") && err.contains("SLIMFLOW_DOWNLOAD_MIN_RATE"),
        "{err}"
    );
    let kept = std::fs::metadata(dir.path().join("w.pth.part"))
        .unwrap()
        .len();
    assert!(kept > 0 && kept < body.len() as u64, "{kept}");
    assert!(err.contains(&format!("{kept} bytes kept")), "{err}");
    // The next try resumes from the kept bytes.
    download_with(&url, &dest, Checksum::Sha256(digest), false, &limits).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
}

#[test]
fn a_download_past_its_deadline_is_given_up() {
    let body = vec![7u8; 4096];
    let base = serve(body, usize::MAX, Duration::from_millis(100));
    let dir = tempfile::tempdir().unwrap();
    let limits = DownloadLimits {
        deadline: Duration::from_secs(2),
        min_rate: 0.0,
        window: Duration::from_secs(60),
    };
    let t = Instant::now();
    let err = download_with(
        &format!("{base}/w.pth"),
        &dir.path().join("w.pth"),
        Checksum::Recorded,
        false,
        &limits,
    )
    .unwrap_err()
    .to_string();
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    assert!(
        err.contains("deadline") && err.contains("SLIMFLOW_DOWNLOAD_DEADLINE"),
        "{err}"
    );
    assert!(dir.path().join("w.pth.part").exists());
}

#[test]
fn malformed_limits_in_the_environment_name_the_variable() {
    assert_eq!(
        DownloadLimits::default(),
        DownloadLimits {
            deadline: Duration::from_secs(7200),
            min_rate: 1024.0,
            window: Duration::from_secs(60),
        }
    );
    // Only this test sets it (tests of this file share the process).
    std::env::set_var("SLIMFLOW_DOWNLOAD_DEADLINE", "soon");
    let err = DownloadLimits::from_env().unwrap_err().to_string();
    std::env::remove_var("SLIMFLOW_DOWNLOAD_DEADLINE");
    assert!(
        err.starts_with("SLIMFLOW_DOWNLOAD_DEADLINE=soon: "),
        "{err}"
    );
}

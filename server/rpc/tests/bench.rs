//! NULL-call throughput over loopback TCP (and UDP): an `#[ignore]`d measurement, run with
//!
//! ```text
//! cargo test -p twinfiler-rpc --release --test bench -- --ignored --nocapture
//! ```
//!
//! `TWINFILER_RPC_BENCH_SECS` sets the seconds per case (default 2). Client and server share
//! the machine (and one tokio runtime with 2 workers), so the figures are a floor.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twinfiler_proto::record::{frame, RecordDecoder};
use twinfiler_rpc::ServerConfig;

/// Runs one connection with `window` calls in flight until `deadline`; returns replies.
async fn run_connection(addr: std::net::SocketAddr, window: usize, deadline: Instant) -> u64 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let call = frame(&toy_call(1, PROC_NULL, &[]));
    let burst: Vec<u8> = call.repeat(window);
    stream.write_all(&burst).await.unwrap();
    let mut decoder = RecordDecoder::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut replies = 0u64;
    let mut inflight = window;
    // Bounded by the deadline: every round reads at least one byte or ends.
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "server closed the connection");
        let mut input = &buf[..n];
        let mut done = 0;
        while !input.is_empty() {
            let fed = decoder.feed(input).unwrap();
            input = &input[fed.consumed..];
            if fed.record.is_some() {
                done += 1;
            }
        }
        replies += done as u64;
        inflight -= done;
        if Instant::now() >= deadline {
            break;
        }
        if done > 0 {
            stream.write_all(&burst[..call.len() * done]).await.unwrap();
            inflight += done;
        }
    }
    // Drain what is still in flight so the server sees a clean close.
    while inflight > 0 {
        let n = stream.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        let mut input = &buf[..n];
        while !input.is_empty() {
            let fed = decoder.feed(input).unwrap();
            input = &input[fed.consumed..];
            if fed.record.is_some() {
                inflight -= 1;
            }
        }
    }
    replies
}

/// Counts complete records in `input`.
fn count_records(decoder: &mut RecordDecoder, mut input: &[u8]) -> u64 {
    let mut records = 0;
    while !input.is_empty() {
        let fed = decoder.feed(input).unwrap();
        input = &input[fed.consumed..];
        records += u64::from(fed.record.is_some());
    }
    records
}

/// Streams 1 MiB ECHO calls on one connection for `duration` (as many in flight as the socket
/// buffers and the server's bound allow) while reading the replies; returns (calls, seconds).
async fn bulk_echo(addr: std::net::SocketAddr, duration: Duration) -> (u64, f64) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let call = frame(&toy_call(1, PROC_ECHO, &vec![0xa5u8; 1024 * 1024]));
    let started = Instant::now();
    let mut sender = tokio::spawn(async move {
        let mut sent = 0u64;
        while started.elapsed() < duration {
            wr.write_all(&call).await.unwrap();
            sent += 1;
        }
        sent
    });
    let mut decoder = RecordDecoder::default();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut received = 0u64;
    let mut sent = None;
    // Bounded: the sender stops at the deadline, then only `sent` replies are awaited.
    while sent.is_none_or(|sent| received < sent) {
        let n = tokio::time::timeout(WAIT, rd.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "server closed the connection");
        received += count_records(&mut decoder, &buf[..n]);
        if sent.is_none() && sender.is_finished() {
            sent = Some((&mut sender).await.unwrap());
        }
    }
    (received, started.elapsed().as_secs_f64())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --ignored --nocapture"]
async fn null_calls_per_second() {
    let secs: u64 = std::env::var("TWINFILER_RPC_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let t = start(ServerConfig::default()).await;
    for (connections, window) in [(1, 1), (16, 1), (1, 16), (16, 16)] {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(secs);
        let tasks: Vec<_> = (0..connections)
            .map(|_| tokio::spawn(run_connection(t.tcp, window, deadline)))
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "rpc bench: NULL over TCP, {connections:>2} connection(s) x {window:>2} in flight: \
             {:>8.0} calls/s ({total} calls in {elapsed:.2} s)",
            total as f64 / elapsed
        );
    }
    // UDP, one call at a time from one socket.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let call = toy_call(1, PROC_NULL, &[]);
    let mut buf = [0u8; 512];
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let mut total = 0u64;
    while Instant::now() < deadline {
        socket.send_to(&call, t.udp).await.unwrap();
        tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        total += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "rpc bench: NULL over UDP,  1 socket x  1 in flight: {:>8.0} calls/s",
        total as f64 / elapsed
    );
    // Bulk: 1 MiB calls echoed back (a WRITE's record in, a READ's data out).
    let (calls, elapsed) = bulk_echo(t.tcp, Duration::from_secs(secs)).await;
    println!(
        "rpc bench: 1 MiB ECHO over TCP, 1 connection, pipelined: {:>7.0} MiB/s each way \
         ({calls} calls in {elapsed:.2} s)",
        calls as f64 / elapsed
    );
    let stats = t.server.stats();
    println!("rpc bench: server stats {stats:?}");
    let report = t.server.stop(WAIT).await;
    assert!(report.drained);
}

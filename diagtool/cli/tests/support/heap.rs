//! The fake target's heap profiles: scripted in-use memory per allocation site, by the target's
//! own clock, built with the model's `ProfileBuilder` in the probe's format (sample types
//! `inuse_objects`, `inuse_space`; period 512 KiB; stacks from the allocator up to `main`).

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use diagtool::model::heap::{INUSE_OBJECTS, INUSE_SPACE};
use diagtool::pprof::{Frame, ProfileBuilder};

use super::Script;

/// The sampling period the fake target states.
pub const PERIOD: i64 = 1 << 19;
pub const LEAK_SITE: &str = "shipper/src/leaklab.rs:140";
pub const LEAK_FUNCTION: &str = "shipper::leaklab::memory_cache_insert";
pub const POOL_SITE: &str = "shipper/src/pipeline/batch.rs:77";
pub const BURST_SITE: &str = "shipper/src/source/file.rs:42";
pub const NOISE_SITE: &str = "shipper/src/sink/loki.rs:210";
pub const DEP_SITE: &str = "hyper-1.7.0/src/proto/h1/io.rs:100";
/// What the probe answers when it was built without heap profiling.
pub const NOT_BUILT_IN: &str = "heap profiling is not built in: build the service with the \
    cargo feature `heap-profiling` of diagtool-probe";

/// The answer to the `n`th request (0-based), `elapsed` seconds after the target started.
pub fn answer(script: Script, n: u64, elapsed: f64) -> Response {
    match script {
        Script::HeapUnsupported => {
            return (
                StatusCode::NOT_IMPLEMENTED,
                [(header::CONTENT_TYPE, "text/plain")],
                format!("{NOT_BUILT_IN}\n(then /debug/pprof/heap serves in-use memory)\n"),
            )
                .into_response();
        }
        Script::HeapBusyOnce if n == 0 => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "1")],
                "another heap profile is being taken",
            )
                .into_response();
        }
        Script::HeapGarbage => return garbage(),
        Script::HeapFlaky if n % 3 == 2 => return garbage(),
        _ => {}
    }
    let leaking = matches!(script, Script::HeapLeaking | Script::HeapFlaky);
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        profile(leaking, n, elapsed),
    )
        .into_response()
}

/// Gzip's magic and then nothing a decoder can read.
fn garbage() -> Response {
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        vec![0x1f, 0x8b, 0x08, 0x00, b'n', b'o', b'p', b'e'],
    )
        .into_response()
}

/// The scripted profile, gzipped.
pub fn profile(leaking: bool, n: u64, elapsed: f64) -> Vec<u8> {
    let mut builder = ProfileBuilder::new(&[(INUSE_OBJECTS, "count"), (INUSE_SPACE, "bytes")])
        .period("space", "bytes", PERIOD);
    let root = [
        Frame::at("shipper::main", "shipper/src/main.rs", 20),
        Frame::at(
            "tokio::runtime::task::harness::poll",
            "tokio-1.54.1/src/runtime/task/harness.rs",
            473,
        ),
    ];
    let alloc = [
        Frame::at(
            "alloc::raw_vec::RawVec<T>::allocate_in",
            "alloc/src/raw_vec.rs",
            400,
        ),
        Frame::named("_rjem_malloc"),
    ];
    let mut add = |own: Frame, objects: i64, bytes: i64| {
        if bytes > 0 {
            let stack: Vec<Frame> = root
                .iter()
                .cloned()
                .chain(std::iter::once(own))
                .chain(alloc.iter().cloned())
                .collect();
            builder.add(&stack, &[objects, bytes]);
        }
    };
    let at = |site: &str, function: &str| {
        let (file, line) = site.rsplit_once(':').expect("file:line");
        Frame::at(function, file, line.parse().expect("line"))
    };
    if leaking {
        // 5 periods more every second, kept for good.
        let kept = 1 + (elapsed * 5.0).floor() as i64;
        add(at(LEAK_SITE, LEAK_FUNCTION), kept, kept * PERIOD);
    }
    // Warms up by 2 periods every 0.2 s for 0.6 s, then holds at 6 periods.
    let pool = (2 * (1 + (elapsed / 0.2).floor() as i64)).min(6);
    add(
        at(POOL_SITE, "shipper::pipeline::batch::Batch::with_capacity"),
        pool,
        pool * PERIOD,
    );
    // 40 periods while the first second's backlog is read, then 2.
    let burst = if elapsed < 1.0 { 40 } else { 2 };
    add(
        at(BURST_SITE, "shipper::source::file::read_chunk"),
        burst,
        burst * PERIOD,
    );
    // Buffers that come and go: a fresh draw of 0..=6 sampled periods each request.
    let mut x = (n + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 29;
    let noise = (x % 7) as i64;
    add(
        at(NOISE_SITE, "shipper::sink::loki::encode_body"),
        noise,
        noise * PERIOD,
    );
    // Only a dependency's frames: named by its innermost non-allocator frame.
    builder.add(
        &[
            root[1].clone(),
            at(DEP_SITE, "hyper::proto::h1::io::Buffered<T,B>::read_mut"),
            alloc[0].clone(),
        ],
        &[1, PERIOD / 2],
    );
    builder.encode_gzip()
}

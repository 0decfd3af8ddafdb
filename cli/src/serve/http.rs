//! The HTTP side of `spinel serve`: hyper 1.x (HTTP/1.1) on tokio. Each
//! connection is a task, not a thread; the engine runs on blocking threads
//! of its own and hands generated pieces over bounded channels, so this side
//! only does I/O.
//!
//! Limits, each one a flag of `spinel serve`:
//!
//! * at most `--max-connections` open connections: beyond them the server
//!   stops accepting until one closes (new ones wait in the listen backlog);
//! * a request's header must arrive within `--timeout-header` (hyper's
//!   header read timeout, which also bounds the wait for the next request on
//!   a kept-alive connection), its body within `--timeout-body`;
//! * a connection on which nothing arrives for `--timeout-idle` while no
//!   request is in progress is closed ([`TimeoutIo`]);
//! * a write that cannot proceed for `--timeout-write` (a client that
//!   stopped reading) drops the connection: its response body goes, the
//!   generation feeding it sees its channel closed and cancels, and the
//!   session returns to the pool.
//!
//! Shutdown (SIGTERM or Ctrl-C): the listener closes (new connections are
//! refused), kept-alive connections close after their response, the queue
//! is refused (503), running generations get `--shutdown-grace` to finish,
//! then are cancelled (their responses end cleanly), and the server returns.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Sleep;

use super::Ctx;
use super::openai::ApiError;
use super::requests::Abandon;

/// The timeouts and caps of the HTTP side.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub max_body: usize,
    pub header: Duration,
    pub body: Duration,
    pub idle: Duration,
    pub write: Duration,
    pub grace: Duration,
}

/// Requests in progress on one connection (a response body still being
/// sent counts): while there are any, the connection is not idle.
#[derive(Clone, Default)]
struct Activity(Arc<AtomicUsize>);

/// One request in progress on its connection while this lives.
pub struct Active(Arc<AtomicUsize>);

impl Activity {
    fn start(&self) -> Active {
        self.0.fetch_add(1, Ordering::Relaxed);
        Active(Arc::clone(&self.0))
    }

    fn is_idle(&self) -> bool {
        self.0.load(Ordering::Relaxed) == 0
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket with an idle (read) timeout and a write timeout: a read that
/// waits longer than `idle` while no request is in progress, or a write
/// that cannot proceed for `write`, fails with `TimedOut`, and hyper drops
/// the connection.
struct TimeoutIo {
    io: TcpStream,
    activity: Activity,
    idle: Duration,
    write: Duration,
    idle_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
    ctx: Arc<Ctx>,
}

/// Polls `timer` (armed now if it is not), failing once it fires (then it
/// is disarmed: each failure is one whole timeout).
fn poll_timer(
    timer: &mut Option<Pin<Box<Sleep>>>,
    after: Duration,
    cx: &mut Context<'_>,
    what: &str,
) -> Poll<io::Result<()>> {
    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
    match t.as_mut().poll(cx) {
        Poll::Ready(()) => {
            *timer = None;
            Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{what} timed out"),
            )))
        }
        Poll::Pending => Poll::Pending,
    }
}

impl TimeoutIo {
    /// After an inner write poll: a timeout error if it stays pending
    /// past the write timeout.
    fn write_result<T>(
        &mut self,
        r: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => {
                ready!(poll_timer(&mut self.write_timer, self.write, cx, "write"))
                    .inspect_err(|_| self.ctx.metrics.write_timed_out())?;
                Poll::Pending
            }
            ready => {
                self.write_timer = None;
                ready
            }
        }
    }
}

impl AsyncRead for TimeoutIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        match Pin::new(&mut me.io).poll_read(cx, buf) {
            Poll::Pending if me.activity.is_idle() => {
                ready!(poll_timer(
                    &mut me.idle_timer,
                    me.idle,
                    cx,
                    "idle connection"
                ))
                .inspect_err(|_| me.ctx.metrics.idle_timed_out())?;
                Poll::Pending
            }
            Poll::Pending => {
                me.idle_timer = None;
                Poll::Pending
            }
            ready => {
                me.idle_timer = None;
                ready
            }
        }
    }
}

impl AsyncWrite for TimeoutIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.io).poll_write(cx, buf);
        me.write_result(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.io).poll_write_vectored(cx, bufs);
        me.write_result(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.io).poll_flush(cx);
        me.write_result(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.io).poll_shutdown(cx);
        me.write_result(r, cx)
    }
}

/// What the engine side sends for one response: first its head (a whole
/// response, or the start of an event stream), then the stream's chunks.
#[derive(Debug)]
pub enum Msg {
    /// A whole response: status, JSON body, `Retry-After` seconds.
    Full {
        status: u16,
        body: Bytes,
        retry_after: Option<u32>,
    },
    /// A `200 text/event-stream` response whose chunks follow.
    Stream,
    Chunk(Bytes),
}

enum Content {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Msg>),
}

/// A response body: whole, or the chunks of an event stream as the engine
/// sends them. It holds what must live as long as the response: the
/// connection's activity mark and the generation's [`Abandon`] guard
/// (dropped with the body when the client goes away, which cancels it).
pub struct Out {
    content: Content,
    _active: Option<Active>,
    _abandon: Option<Abandon>,
}

impl Out {
    pub fn full(bytes: impl Into<Bytes>) -> Out {
        Out {
            content: Content::Full(Some(bytes.into())),
            _active: None,
            _abandon: None,
        }
    }

    pub fn stream(rx: mpsc::Receiver<Msg>, abandon: Abandon) -> Out {
        Out {
            content: Content::Stream(rx),
            _active: None,
            _abandon: Some(abandon),
        }
    }

    fn hold(mut self, active: Active) -> Out {
        self._active = Some(active);
        self
    }
}

impl Body for Out {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().content {
            Content::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Content::Stream(rx) => loop {
                match ready!(rx.poll_recv(cx)) {
                    Some(Msg::Chunk(b)) => return Poll::Ready(Some(Ok(Frame::data(b)))),
                    // Only chunks follow a stream's head.
                    Some(_) => continue,
                    None => return Poll::Ready(None),
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.content, Content::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.content {
            Content::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Content::Stream(_) => SizeHint::default(),
        }
    }
}

pub type Response = hyper::Response<Out>;

/// Reads a request body of at most `max` bytes within `timeout`. A larger
/// one is 413; it is read to its end first (up to 16 MiB, so the client
/// sees the answer rather than a reset connection) unless the client asked
/// to be told before sending it (`Expect: 100-continue`).
pub async fn read_body(
    req: hyper::Request<Incoming>,
    max: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    const DRAIN_MAX: u64 = 16 << 20;
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let expects = req.headers().contains_key(hyper::header::EXPECT);
    let too_large = || {
        ApiError::status(
            413,
            format!("The request body is larger than the limit of {max} bytes"),
            "request_too_large",
        )
    };
    let mut body = req.into_body();
    if declared.is_some_and(|n| n > max as u64) && (expects || declared > Some(DRAIN_MAX)) {
        return Err(too_large());
    }
    let read = async {
        let mut bytes = Vec::new();
        let mut seen: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::invalid(format!("cannot read the request body: {e}"), None)
            })?;
            if let Ok(data) = frame.into_data() {
                seen += data.len() as u64;
                if seen > DRAIN_MAX {
                    break;
                }
                if seen <= max as u64 {
                    bytes.extend_from_slice(&data);
                }
            }
        }
        if seen > max as u64 {
            return Err(too_large());
        }
        Ok(Bytes::from(bytes))
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::status(
                408,
                format!(
                    "The request body did not arrive within {} s",
                    timeout.as_secs_f64()
                ),
                "request_timeout",
            ))
        })
}

/// Listens on `host:port` (the first address it resolves to that binds),
/// with `send_buffer` as the accepted connections' kernel send buffer
/// (SO_SNDBUF, inherited from the listener) when given.
pub async fn listen(host: &str, port: u16, send_buffer: Option<u32>) -> io::Result<TcpListener> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host resolves to no address");
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = match addr {
            std::net::SocketAddr::V4(_) => TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        // As std's and tokio's `TcpListener::bind` do on Unix: a restarted
        // server can take its port back from connections in TIME_WAIT.
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        if let Some(n) = send_buffer {
            socket.set_send_buffer_size(n)?;
        }
        match socket.bind(addr).and_then(|()| socket.listen(1024)) {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Serves connections on `listener` until SIGTERM or Ctrl-C, then shuts
/// down gracefully (see the [module docs](self)); a second signal cuts the
/// grace period short.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<Ctx>,
    mut signals: Signals,
) -> Result<(), String> {
    let limits = ctx.limits.clone();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    loop {
        let permit = tokio::select! {
            _ = signals.recv() => break,
            p = Arc::clone(&permits).acquire_owned() => p.map_err(|e| e.to_string())?,
        };
        let tcp = tokio::select! {
            _ = signals.recv() => break,
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: wait, retry.
                    eprintln!("spinel serve: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ctx = Arc::clone(&ctx);
        tokio::spawn(connection(tcp, ctx, shutdown_rx.clone(), permit));
    }
    drop(listener);
    eprintln!(
        "spinel serve: shutting down: no new connections; running requests get {:.0} s",
        limits.grace.as_secs_f64()
    );
    let _ = shutdown_tx.send(true);
    ctx.shutting_down();
    drain(&ctx, &mut signals).await;
    // Let the last responses reach their clients (connections close after
    // them); idle and half-open ones do not hold up the exit for long.
    let end = Instant::now() + Duration::from_secs(1);
    while permits.available_permits() < limits.max_connections && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("spinel serve: stopped");
    Ok(())
}

/// Waits for the running requests to finish: within the grace period (or
/// until a second signal), then cancelled, for at most 3 s more.
async fn drain(ctx: &Ctx, signals: &mut Signals) {
    let done = async {
        while !ctx.requests.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        _ = done => return,
        _ = tokio::time::sleep(ctx.limits.grace) => {}
        _ = signals.recv() => {}
    }
    eprintln!(
        "spinel serve: cancelling {} requests still running",
        ctx.requests.len()
    );
    ctx.requests.cancel_all();
    let end = Instant::now() + Duration::from_secs(3);
    while !ctx.requests.is_empty() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One connection: HTTP/1.1 with the limits, closed gracefully (after its
/// response in progress) at shutdown.
async fn connection(
    tcp: TcpStream,
    ctx: Arc<Ctx>,
    mut shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) {
    let _ = tcp.set_nodelay(true);
    let _open = Open::count(&ctx);
    let activity = Activity::default();
    let limits = &ctx.limits;
    let io = TimeoutIo {
        io: tcp,
        activity: activity.clone(),
        idle: limits.idle,
        write: limits.write,
        idle_timer: None,
        write_timer: None,
        ctx: Arc::clone(&ctx),
    };
    let handler_ctx = Arc::clone(&ctx);
    let service = service_fn(move |req| {
        let active = activity.start();
        let ctx = Arc::clone(&handler_ctx);
        async move {
            let response = super::routes::handle(ctx, req).await;
            Ok::<_, Infallible>(response.map(|body| body.hold(active)))
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let ended = tokio::select! {
        r = conn.as_mut() => Some(r),
        _ = shutdown.wait_for(|&s| s) => None,
    };
    let result = match ended {
        Some(r) => r,
        None => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if result.is_err_and(|e| e.is_timeout()) {
        ctx.metrics.header_timed_out();
    }
}

/// An open connection, counted for `/metrics` while this lives.
struct Open(Arc<Ctx>);

impl Open {
    fn count(ctx: &Arc<Ctx>) -> Open {
        ctx.connections.fetch_add(1, Ordering::Relaxed);
        Open(Arc::clone(ctx))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// SIGTERM and SIGINT (Ctrl-C), registered when made: a signal that comes
/// before the server waits for it is not lost (nor does it kill the
/// process).
pub struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Registers the handlers (inside the tokio runtime).
    pub fn new() -> Result<Signals, String> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let reg = |k: SignalKind| signal(k).map_err(|e| format!("cannot handle signals: {e}"));
            Ok(Signals {
                term: reg(SignalKind::terminate())?,
                int: reg(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next signal.
    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        {
            let _ = self;
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

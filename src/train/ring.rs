//! The CPU collective: the workers of a stage in a ring over TCP, each connected to the next. The
//! launcher serves the rendezvous (`MASTER_ADDR:MASTER_PORT`, as torch names it): each worker sends
//! its rank and the address of its ring socket, and gets back everyone's. A sum is a reduce-scatter
//! then an all-gather around the ring (each worker sends 2·(N−1)/N of the data, whatever N is).
//! Every read and write has the group's timeout, so a dead or stuck worker is an error, not a hang.

use super::collective::{Collective, CollectiveError};
use serde::{Deserialize, Serialize};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// What a worker tells the rendezvous.
#[derive(Serialize, Deserialize)]
struct Hello {
    token: String,
    rank: usize,
    world: usize,
    /// Where the worker's ring socket listens.
    addr: SocketAddr,
}

/// The rendezvous's answer: every worker's ring address by rank, or why the group cannot form.
#[derive(Serialize, Deserialize)]
struct Roster {
    addrs: Vec<SocketAddr>,
    error: Option<String>,
}

/// What a worker says first on the ring connection it opens to the next one.
#[derive(Serialize, Deserialize)]
struct PeerHello {
    token: String,
    rank: usize,
}

const MAX_FRAME: usize = 1 << 20;
const OP_SUM: u8 = 1;
const OP_GATHER: u8 = 2;

fn write_frame(s: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    s.write_all(&(bytes.len() as u32).to_le_bytes())?;
    s.write_all(bytes)
}

fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::new(
            ErrorKind::InvalidData,
            "a frame larger than 1 MiB",
        ));
    }
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

fn with_timeout(s: &TcpStream, timeout: Duration) -> std::io::Result<()> {
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)
}

/// Serves the rendezvous on `listener` for `world` workers that present `token`: waits (at most
/// `timeout`, or until `abandoned`: the stage failed before they all came) until all have said
/// hello, then sends each the roster.
pub fn serve_rendezvous(
    listener: &TcpListener,
    world: usize,
    token: &str,
    timeout: Duration,
    abandoned: &std::sync::atomic::AtomicBool,
) -> Result<(), CollectiveError> {
    let deadline = Instant::now() + timeout;
    let mut joined: Vec<Option<(TcpStream, SocketAddr)>> = (0..world).map(|_| None).collect();
    listener
        .set_nonblocking(true)
        .map_err(|e| CollectiveError(format!("rendezvous: {e}")))?;
    while joined.iter().any(Option::is_none) {
        let (mut s, _) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if abandoned.load(std::sync::atomic::Ordering::Relaxed) {
                    // The launcher already has the stage's cause; nothing is left to serve.
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    let missing: Vec<String> = (0..world)
                        .filter(|r| joined[*r].is_none())
                        .map(|r| r.to_string())
                        .collect();
                    return Err(CollectiveError(format!(
                        "worker {} did not join the group within {} s",
                        missing.join(", "),
                        timeout.as_secs_f64()
                    )));
                }
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(e) => return Err(CollectiveError(format!("rendezvous: {e}"))),
        };
        let hello = s
            .set_nonblocking(false)
            .and_then(|()| with_timeout(&s, timeout))
            .and_then(|()| read_frame(&mut s))
            .ok()
            .and_then(|b| serde_json::from_slice::<Hello>(&b).ok());
        // Something else on the port, or a worker of another run: not one of ours.
        let Some(hello) = hello.filter(|h| h.token == token) else {
            continue;
        };
        let problem = if hello.world != world || hello.rank >= world {
            Some(format!(
                "worker {} says the group has {} workers, the launcher {world}",
                hello.rank, hello.world
            ))
        } else if joined[hello.rank].is_some() {
            Some(format!("two workers say they are worker {}", hello.rank))
        } else {
            None
        };
        if let Some(problem) = problem {
            let reply = Roster {
                addrs: vec![],
                error: Some(problem.clone()),
            };
            let _ = write_frame(&mut s, &serde_json::to_vec(&reply).unwrap_or_default());
            return Err(CollectiveError(problem));
        }
        joined[hello.rank] = Some((s, hello.addr));
    }
    let addrs: Vec<SocketAddr> = joined.iter().flatten().map(|(_, a)| *a).collect();
    let reply = serde_json::to_vec(&Roster { addrs, error: None }).unwrap_or_default();
    for (rank, (s, _)) in joined.iter_mut().flatten().enumerate() {
        write_frame(s, &reply)
            .map_err(|e| CollectiveError(format!("rendezvous: worker {rank}: {e}")))?;
    }
    Ok(())
}

/// A worker's place in the ring: the connection to the next worker (it sends) and from the
/// previous one (it receives).
pub struct Ring {
    rank: usize,
    world: usize,
    timeout: Duration,
    next: Option<TcpStream>,
    prev: Option<TcpStream>,
}

/// Where a worker finds its group (torch's variables): `MASTER_ADDR`, `MASTER_PORT`, `RANK`,
/// `WORLD_SIZE`, and the launcher's token in `PTL_GROUP_TOKEN`.
pub struct Membership {
    pub master: SocketAddr,
    pub rank: usize,
    pub world: usize,
    pub token: String,
}

impl Membership {
    pub fn from_env() -> Result<Membership, String> {
        let var = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
        let addr = format!("{}:{}", var("MASTER_ADDR")?, var("MASTER_PORT")?);
        let master = std::net::ToSocketAddrs::to_socket_addrs(&addr)
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| format!("MASTER_ADDR:MASTER_PORT = {addr} is not an address"))?;
        let number = |k: &str| -> Result<usize, String> {
            var(k)?.parse().map_err(|_| format!("{k} is not a number"))
        };
        Ok(Membership {
            master,
            rank: number("RANK")?,
            world: number("WORLD_SIZE")?,
            token: var("PTL_GROUP_TOKEN")?,
        })
    }
}

fn io_error(what: &str, peer: usize, timeout: Duration, e: std::io::Error) -> CollectiveError {
    CollectiveError(match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
            "{what}: no word from worker {peer} in {} s (the collective timeout)",
            timeout.as_secs_f64()
        ),
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => {
            format!("{what}: worker {peer} left the group (its connection closed)")
        }
        _ => format!("{what}: worker {peer}: {e}"),
    })
}

impl Ring {
    /// Joins the group: hello to the rendezvous, then a connection to the next worker and one from
    /// the previous. Each step waits at most `timeout`.
    pub fn join(m: &Membership, timeout: Duration) -> Result<Ring, CollectiveError> {
        let (rank, world) = (m.rank, m.world);
        let err = |e: std::io::Error| io_error("joining the group", world, timeout, e);
        let mut master = TcpStream::connect_timeout(&m.master, timeout).map_err(|e| {
            CollectiveError(format!(
                "cannot reach the group's rendezvous at {}: {e}",
                m.master
            ))
        })?;
        with_timeout(&master, timeout).map_err(err)?;
        // The ring socket listens where this worker reaches the rendezvous from.
        let ip = master.local_addr().map_err(err)?.ip();
        let listener = TcpListener::bind((ip, 0)).map_err(err)?;
        let hello = Hello {
            token: m.token.clone(),
            rank,
            world,
            addr: listener.local_addr().map_err(err)?,
        };
        write_frame(&mut master, &serde_json::to_vec(&hello).unwrap_or_default()).map_err(err)?;
        let roster: Roster = read_frame(&mut master)
            .map_err(|e| {
                CollectiveError(format!(
                    "joining the group: no roster from the rendezvous ({e})"
                ))
            })
            .and_then(|b| {
                serde_json::from_slice(&b).map_err(|e| {
                    CollectiveError(format!("joining the group: a malformed roster ({e})"))
                })
            })?;
        if let Some(problem) = roster.error {
            return Err(CollectiveError(problem));
        }
        if world == 1 {
            return Ok(Ring {
                rank,
                world,
                timeout,
                next: None,
                prev: None,
            });
        }
        let next_rank = (rank + 1) % world;
        let mut next = TcpStream::connect_timeout(&roster.addrs[next_rank], timeout)
            .map_err(|e| io_error("joining the ring", next_rank, timeout, e))?;
        with_timeout(&next, timeout).map_err(err)?;
        let peer = PeerHello {
            token: m.token.clone(),
            rank,
        };
        write_frame(&mut next, &serde_json::to_vec(&peer).unwrap_or_default())
            .map_err(|e| io_error("joining the ring", next_rank, timeout, e))?;
        let prev_rank = (rank + world - 1) % world;
        let prev = accept_peer(&listener, &m.token, prev_rank, timeout)?;
        Ok(Ring {
            rank,
            world,
            timeout,
            next: Some(next),
            prev: Some(prev),
        })
    }

    fn streams(&self) -> (&TcpStream, &TcpStream) {
        match (&self.next, &self.prev) {
            (Some(n), Some(p)) => (n, p),
            _ => unreachable!("a ring of more than one worker has both neighbours"),
        }
    }

    /// Sends `out` to the next worker while receiving `into.len()` bytes from the previous one (both
    /// at once, so that a full socket buffer on one side never blocks the other).
    fn exchange(&self, op: u8, out: &[u8], into: &mut [u8]) -> Result<(), CollectiveError> {
        let (next, prev) = self.streams();
        let (next_rank, prev_rank) = (
            (self.rank + 1) % self.world,
            (self.rank + self.world - 1) % self.world,
        );
        let what = if op == OP_SUM {
            "summing gradients"
        } else {
            "sharing step records"
        };
        let timeout = self.timeout;
        std::thread::scope(|scope| {
            let sender = scope.spawn(move || -> std::io::Result<()> {
                let mut next = next;
                let mut header = [0u8; 9];
                header[0] = op;
                header[1..].copy_from_slice(&(out.len() as u64).to_le_bytes());
                next.write_all(&header)?;
                next.write_all(out)
            });
            let received = (|| -> std::io::Result<()> {
                let mut prev = prev;
                let mut header = [0u8; 9];
                prev.read_exact(&mut header)?;
                let len = u64::from_le_bytes(header[1..].try_into().unwrap_or_default());
                if header[0] != op || len != into.len() as u64 {
                    return Err(std::io::Error::new(
                        ErrorKind::InvalidData,
                        format!(
                            "out of step: it sent {len} bytes of operation {}, this worker expects {} bytes of operation {op}",
                            header[0],
                            into.len()
                        ),
                    ));
                }
                prev.read_exact(into)
            })()
            .map_err(|e| io_error(what, prev_rank, timeout, e));
            let sent = sender
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the sending thread panicked")))
                .map_err(|e| io_error(what, next_rank, timeout, e));
            received.and(sent)
        })
    }
}

fn accept_peer(
    listener: &TcpListener,
    token: &str,
    prev_rank: usize,
    timeout: Duration,
) -> Result<TcpStream, CollectiveError> {
    let deadline = Instant::now() + timeout;
    let err = |e: std::io::Error| io_error("joining the ring", prev_rank, timeout, e);
    listener.set_nonblocking(true).map_err(err)?;
    loop {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).map_err(err)?;
                with_timeout(&s, timeout).map_err(err)?;
                let hello = read_frame(&mut s)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<PeerHello>(&b).ok());
                match hello {
                    Some(h) if h.token == token && h.rank == prev_rank => return Ok(s),
                    Some(h) if h.token == token => {
                        return Err(CollectiveError(format!(
                            "joining the ring: worker {} connected where worker {prev_rank} should",
                            h.rank
                        )))
                    }
                    _ => continue,
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(err(e)),
        }
    }
}

/// The bounds of chunk `i` of `n` over `len` elements.
fn chunk(len: usize, n: usize, i: usize) -> std::ops::Range<usize> {
    (i * len / n)..((i + 1) * len / n)
}

fn to_bytes(xs: &[f32]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn from_bytes(bytes: &[u8], into: &mut [f32]) {
    for (x, b) in into.iter_mut().zip(bytes.chunks_exact(4)) {
        *x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

impl Collective for Ring {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), CollectiveError> {
        let (n, r) = (self.world, self.rank);
        if n == 1 {
            return Ok(());
        }
        let len = data.len();
        let mut incoming = Vec::new();
        // Reduce-scatter: after step s, chunk (r − s − 1) holds s + 2 workers' sum; after n − 1
        // steps this worker holds the whole sum of chunk (r + 1).
        for s in 0..n - 1 {
            let send = chunk(len, n, (r + n - s) % n);
            let recv = chunk(len, n, (r + 2 * n - s - 1) % n);
            let out = to_bytes(&data[send]);
            incoming.resize(recv.len() * 4, 0);
            self.exchange(OP_SUM, &out, &mut incoming)?;
            let mut theirs = vec![0f32; recv.len()];
            from_bytes(&incoming, &mut theirs);
            for (x, y) in data[recv].iter_mut().zip(theirs) {
                *x += y;
            }
        }
        // All-gather: each finished chunk travels around the ring, copied as it is.
        for s in 0..n - 1 {
            let send = chunk(len, n, (r + 1 + n - s) % n);
            let recv = chunk(len, n, (r + n - s) % n);
            let out = to_bytes(&data[send]);
            incoming.resize(recv.len() * 4, 0);
            self.exchange(OP_SUM, &out, &mut incoming)?;
            from_bytes(&incoming, &mut data[recv]);
        }
        Ok(())
    }

    fn all_gather(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, CollectiveError> {
        let (n, r) = (self.world, self.rank);
        let mut blocks: Vec<Vec<u8>> = vec![Vec::new(); n];
        blocks[r] = bytes.to_vec();
        // Step s passes on the block of worker r − s, first the block's length, then the block.
        for s in 0..n - 1 {
            let send = (r + n - s) % n;
            let recv = (r + 2 * n - s - 1) % n;
            let mut len = [0u8; 8];
            self.exchange(
                OP_GATHER,
                &(blocks[send].len() as u64).to_le_bytes(),
                &mut len,
            )?;
            let mut block = vec![0u8; u64::from_le_bytes(len) as usize];
            let out = blocks[send].clone();
            self.exchange(OP_GATHER, &out, &mut block)?;
            blocks[recv] = block;
        }
        Ok(blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `world` workers on loopback, each running `work` with its ring; their results by rank.
    fn group<T: Send>(
        world: usize,
        timeout: Duration,
        work: impl Fn(Ring) -> T + Sync,
    ) -> Vec<Result<T, CollectiveError>> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let master = listener.local_addr().unwrap();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                serve_rendezvous(&listener, world, "t", timeout, &Default::default()).unwrap()
            });
            let workers: Vec<_> = (0..world)
                .map(|rank| {
                    let work = &work;
                    scope.spawn(move || {
                        let m = Membership {
                            master,
                            rank,
                            world,
                            token: "t".into(),
                        };
                        Ring::join(&m, timeout).map(work)
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        })
    }

    #[test]
    fn every_worker_gets_the_same_sum_and_every_block() {
        for world in [1, 2, 3, 5] {
            // 7 elements: chunks of unequal length, one of them empty when world is 5... or not.
            for len in [0, 1, 7, 1000] {
                let results = group(world, Duration::from_secs(10), |ring| {
                    let r = ring.rank() as f32;
                    let mut data: Vec<f32> = (0..len).map(|i| i as f32 * 0.5 + r).collect();
                    ring.all_reduce_sum(&mut data).unwrap();
                    let blocks = ring
                        .all_gather(&vec![ring.rank() as u8; ring.rank()])
                        .unwrap();
                    (data, blocks)
                });
                let w = world as f32;
                let want: Vec<f32> = (0..len)
                    .map(|i| i as f32 * 0.5 * w + (0..world).map(|r| r as f32).sum::<f32>())
                    .collect();
                for result in results {
                    let (data, blocks) = result.unwrap();
                    assert_eq!(data, want, "world {world}, len {len}");
                    let want_blocks: Vec<Vec<u8>> = (0..world).map(|r| vec![r as u8; r]).collect();
                    assert_eq!(blocks, want_blocks);
                }
            }
        }
    }

    #[test]
    fn a_worker_that_leaves_or_goes_silent_fails_the_others_within_the_timeout() {
        let started = Instant::now();
        let results = group(3, Duration::from_secs(2), |ring| {
            if ring.rank() == 1 {
                // Leaves: its sockets close.
                return Ok(());
            }
            ring.all_reduce_sum(&mut [1.0; 10])
        });
        for (rank, r) in results.iter().enumerate().filter(|(r, _)| *r != 1) {
            let e = r.as_ref().unwrap().as_ref().unwrap_err();
            assert!(
                e.0.contains("worker 1 left") || e.0.contains("left the group"),
                "{rank}: {e}"
            );
        }
        let results = group(2, Duration::from_secs(1), |ring| {
            if ring.rank() == 1 {
                // Silent: alive, connected, never sends.
                std::thread::sleep(Duration::from_secs(3));
                return Ok(());
            }
            ring.all_reduce_sum(&mut [1.0; 10])
        });
        let e = results[0].as_ref().unwrap().as_ref().unwrap_err();
        assert!(e.0.contains("no word from worker 1 in 1 s"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn the_rendezvous_ignores_strangers_and_names_who_did_not_join() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stranger = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
        });
        let e = serve_rendezvous(
            &listener,
            2,
            "t",
            Duration::from_millis(500),
            &Default::default(),
        )
        .unwrap_err();
        stranger.join().unwrap();
        assert_eq!(e.0, "worker 0, 1 did not join the group within 0.5 s");
    }
}

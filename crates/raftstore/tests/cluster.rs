//! Scenario tests of a three-member Raft group in one process: real TCP
//! transport on loopback, memory engines, faults injected through each
//! node's `FaultFilter`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_engine::{KeyRange, Keyspace, KvPair, MemoryEngine};
use sluice_raftstore::{
    Bootstrap, Command, Error, FaultFilter, Mutation, PeerSetup, RaftConfig, RaftNode,
};
use tempfile::TempDir;
use tokio::net::TcpListener;

struct Member {
    node: Arc<RaftNode>,
    addr: String,
    _dir: TempDir,
}

fn config(id: u64, dir: &TempDir, snapshot_every: u64) -> RaftConfig {
    let mut config = RaftConfig::new(id, dir.path().join("raft"));
    config.write_timeout_ms = 700;
    config.leader_wait_ms = 1_500;
    config.snapshot_every_logs = snapshot_every;
    config.logs_kept_behind_snapshot = snapshot_every / 10;
    config
}

async fn member(id: u64, bootstrap: Bootstrap, snapshot_every: u64) -> Member {
    member_tuned(id, bootstrap, snapshot_every, |_| {}).await
}

async fn member_tuned(
    id: u64,
    bootstrap: Bootstrap,
    snapshot_every: u64,
    tune: impl Fn(&mut RaftConfig),
) -> Member {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let mut config = config(id, &dir, snapshot_every);
    tune(&mut config);
    let node = RaftNode::start_cluster(
        MemoryEngine::new(),
        config,
        PeerSetup {
            listener,
            advertise_addr: addr.clone(),
            bootstrap,
            faults: FaultFilter::default(),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("start node {id}: {e}"));
    Member {
        node,
        addr,
        _dir: dir,
    }
}

async fn cluster(size: u64, snapshot_every: u64) -> Vec<Member> {
    cluster_tuned(size, snapshot_every, |_| {}).await
}

async fn cluster_tuned(
    size: u64,
    snapshot_every: u64,
    tune: impl Fn(&mut RaftConfig) + Copy,
) -> Vec<Member> {
    let first = member_tuned(1, Bootstrap::Init, snapshot_every, tune).await;
    let seed = first.addr.clone();
    let mut members = vec![first];
    for id in 2..=size {
        let join = Bootstrap::Join(vec![seed.clone()]);
        members.push(member_tuned(id, join, snapshot_every, tune).await);
    }
    members
}

fn put(key: &str, value: &str) -> Command {
    Command {
        mutations: vec![Mutation::Put {
            key: key.into(),
            value: value.into(),
        }],
    }
}

fn insert(key: &str) -> Command {
    Command {
        mutations: vec![Mutation::Insert {
            key: key.into(),
            value: b"v".to_vec(),
        }],
    }
}

fn local_data(node: &RaftNode) -> Vec<KvPair> {
    node.local_snapshot()
        .scan(Keyspace::Data, &KeyRange::all(), usize::MAX)
        .unwrap()
}

async fn leader_of(members: &[&Member]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for (i, m) in members.iter().enumerate() {
            let status = m.node.status();
            if status.role == sluice_raftstore::Role::Leader
                && members
                    .iter()
                    .all(|o| o.node.status().leader_id == Some(status.node_id))
            {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no leader agreed on");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn converge(members: &[&Member]) -> Vec<KvPair> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let data: Vec<_> = members.iter().map(|m| local_data(&m.node)).collect();
        if data.windows(2).all(|w| w[0] == w[1]) {
            return data.into_iter().next().unwrap_or_default();
        }
        assert!(Instant::now() < deadline, "replicas did not converge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn shutdown(members: Vec<Member>) {
    for m in members {
        m.node.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_through_any_member_reach_every_replica() {
    // Followers forward proposals; a linearizable read on any member sees
    // every write acknowledged before it, wherever it was proposed.
    let members = cluster(3, 10_000).await;
    assert_eq!(members[0].node.members().len(), 3);
    assert!(members[2].node.members().iter().all(|m| m.voter));
    for round in 0..5 {
        for (i, m) in members.iter().enumerate() {
            let key = format!("k{round}-{i}");
            m.node.propose(put(&key, "v")).await.unwrap();
            for reader in &members {
                let snapshot = reader.node.read_snapshot().await.unwrap();
                assert!(
                    snapshot
                        .get(Keyspace::Data, key.as_bytes())
                        .unwrap()
                        .is_some(),
                    "{key} written through node {} not visible on node {}",
                    i + 1,
                    reader.node.node_id()
                );
            }
        }
    }
    let forwarded: u64 = members
        .iter()
        .map(|m| m.node.status().forwarded_proposals)
        .sum();
    assert_eq!(forwarded, 10, "two of three members forwarded each round");
    let all: Vec<&Member> = members.iter().collect();
    assert_eq!(converge(&all).await.len(), 15);
    let statuses = members[1].node.cluster_status().await;
    assert!(statuses.iter().all(|s| s.status.is_some()));
    shutdown(members).await;
}

/// Commands proposed through every member at once (two thirds of them
/// forwarded to the leader in batches) are batched into fewer log entries
/// than commands, and each proposer still gets its own outcome: the inserts
/// of keys taken earlier fail, every other command succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_through_every_member_each_get_their_own_outcome() {
    // 300 proposals at once on a busy 2-core machine: a write may wait longer
    // than the other scenarios' 700 ms, and this test is not about timeouts.
    let members = cluster_tuned(3, 10_000, |c| c.write_timeout_ms = 10_000).await;
    let leader = leader_of(&members.iter().collect::<Vec<_>>()).await;
    for k in (0..300).step_by(3) {
        members[leader]
            .node
            .propose(insert(&format!("c{k}")))
            .await
            .unwrap();
    }
    let entries_before = members[leader].node.status().last_log_index;
    let mut writers = Vec::new();
    for k in 0..300u32 {
        let node = members[k as usize % 3].node.clone();
        writers.push(tokio::spawn(async move {
            (k, node.propose(insert(&format!("c{k}"))).await)
        }));
    }
    for writer in writers {
        let (k, outcome) = writer.await.unwrap();
        match outcome {
            Ok(outcome) => assert!(k % 3 != 0 && outcome.inserted == 1, "c{k}: {outcome:?}"),
            Err(Error::Apply(_)) => assert_eq!(k % 3, 0, "c{k} failed"),
            Err(e) => panic!("c{k}: {e}"),
        }
    }
    let entries = members[leader].node.status().last_log_index - entries_before;
    assert!(entries < 300, "300 commands took {entries} log entries");
    let all: Vec<&Member> = members.iter().collect();
    assert_eq!(converge(&all).await.len(), 300);
    shutdown(members).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn isolated_leader_commits_nothing_and_the_majority_goes_on() {
    let members = cluster(3, 10_000).await;
    let all: Vec<&Member> = members.iter().collect();
    let old = leader_of(&all).await;
    members[old].node.propose(put("before", "1")).await.unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    members[old]
        .node
        .faults()
        .isolate_from(others.iter().map(|&i| members[i].node.node_id()));

    let refused = members[old].node.propose(put("minority", "x")).await;
    assert!(
        matches!(refused, Err(Error::Ambiguous(_))),
        "an isolated leader must not acknowledge: {refused:?}"
    );
    let read = members[old].node.read_snapshot().await;
    assert!(
        matches!(read, Err(Error::Unavailable(_))),
        "an isolated leader must not serve linearizable reads"
    );

    let majority: Vec<&Member> = others.iter().map(|&i| &members[i]).collect();
    let new = leader_of(&majority).await;
    assert_ne!(majority[new].node.node_id(), members[old].node.node_id());
    majority[0]
        .node
        .propose(put("majority", "2"))
        .await
        .unwrap();
    majority[1]
        .node
        .propose(put("before", "changed"))
        .await
        .unwrap();

    members[old].node.faults().heal();
    let data = converge(&all).await;
    let keys: Vec<&[u8]> = data.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(keys, vec![b"before".as_slice(), b"majority"]);
    assert_eq!(data[0].1, b"changed");
    shutdown(members).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_joiner_installs_a_snapshot_and_a_removed_member_is_left_behind() {
    // A snapshot every 10 entries, one kept behind it: a node joining after
    // 60 writes cannot catch up from the log and receives the snapshot.
    let mut members = vec![member(1, Bootstrap::Init, 10).await];
    for i in 0..60 {
        members[0]
            .node
            .propose(put(&format!("k{i:03}"), "v"))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while members[0].node.status().purged_index == 0 {
        assert!(
            Instant::now() < deadline,
            "log never purged behind a snapshot"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seed = members[0].addr.clone();
    members.push(member(2, Bootstrap::Join(vec![seed.clone()]), 10).await);
    members.push(member(3, Bootstrap::Join(vec![seed]), 10).await);
    assert!(members[1].node.status().snapshots_installed >= 1);
    let all: Vec<&Member> = members.iter().collect();
    assert_eq!(converge(&all).await.len(), 60);

    // Removal goes through any member; the removed one hears no more writes.
    members[1].node.remove_node(3).await.unwrap();
    assert_eq!(members[0].node.members().len(), 2);
    let refused = members[0].node.remove_node(3).await;
    assert!(matches!(refused, Err(Error::Membership(_))), "{refused:?}");
    let frozen = members[2].node.status().applied_index;
    members[0]
        .node
        .propose(put("after-removal", "v"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(local_data(&members[2].node)
        .iter()
        .all(|(k, _)| k.as_slice() != b"after-removal"));
    assert!(members[2].node.status().applied_index <= frozen + 1);
    let remaining: Vec<&Member> = members[..2].iter().collect();
    assert_eq!(converge(&remaining).await.len(), 61);
    shutdown(members).await;
}

/// A lone voter answers linearizable reads from its applied state; once a
/// second voter joins, every read confirms leadership with the quorum again,
/// and after that voter leaves, the lone voter reads alone again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_a_sole_voter_reads_without_its_quorum() {
    fn reads(member: &Member) -> (u64, u64) {
        let status = member.node.status();
        (status.read_barriers, status.sole_voter_reads)
    }
    let mut members = vec![member(1, Bootstrap::Init, 1_000).await];
    members[0].node.propose(put("alone", "1")).await.unwrap();
    let snapshot = members[0].node.read_snapshot().await.unwrap();
    assert!(snapshot.get(Keyspace::Data, b"alone").unwrap().is_some());
    let (barriers, alone) = reads(&members[0]);
    assert!(barriers >= 1 && alone == barriers, "{barriers} {alone}");

    let seed = members[0].addr.clone();
    members.push(member(2, Bootstrap::Join(vec![seed]), 1_000).await);
    members[1].node.propose(put("pair", "2")).await.unwrap();
    for m in &members {
        let before = reads(m);
        let snapshot = m.node.read_snapshot().await.unwrap();
        assert!(snapshot.get(Keyspace::Data, b"pair").unwrap().is_some());
        let after = reads(m);
        assert_eq!(after.0, before.0 + 1, "node {}", m.node.node_id());
        assert_eq!(after.1, before.1, "node {} read alone", m.node.node_id());
    }

    members[0].node.remove_node(2).await.unwrap();
    let before = reads(&members[0]);
    // The removal is committed; the leader may apply it a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        members[0].node.read_snapshot().await.unwrap();
        if reads(&members[0]).1 > before.1 {
            break;
        }
        assert!(Instant::now() < deadline, "the lone voter never read alone");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown(members).await;
}

#[tokio::test(flavor = "current_thread")]
async fn elections_go_on_while_the_callers_runtime_is_blocked() {
    // A node runs its Raft core on threads of its own, so a caller whose
    // runtime is busy (SQL sessions planning, building catalogs) cannot
    // delay votes and heartbeats. Here the caller's only thread is blocked
    // outright, well past the election timeout, right after the leader
    // stops: the survivors must have elected a new leader meanwhile.
    let mut members = cluster(3, 10_000).await;
    let refs: Vec<&Member> = members.iter().collect();
    let leader = leader_of(&refs).await;
    let term = members[leader].node.status().term;
    let stopped = members.remove(leader);
    stopped.node.shutdown().await.unwrap();

    std::thread::sleep(Duration::from_secs(2));
    let statuses: Vec<_> = members.iter().map(|m| m.node.status()).collect();
    assert!(
        statuses
            .iter()
            .any(|s| s.role == sluice_raftstore::Role::Leader && s.term > term),
        "no new leader while the caller's runtime was blocked: {:?}",
        statuses
            .iter()
            .map(|s| (s.node_id, s.role, s.term))
            .collect::<Vec<_>>()
    );
    shutdown(members).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn survivors_elect_at_once_when_the_leaders_process_is_gone() {
    // Timers so slow that they cannot elect anyone within this test (the
    // leader lease of 30 s plus a timeout of 20 s or more): the survivors
    // must find out from the leader's closed connections and its refusing
    // peer port, and elect a leader right away.
    let slow_timers = |c: &mut RaftConfig| {
        c.heartbeat_interval_ms = 1_000;
        c.election_timeout_min_ms = 20_000;
        c.election_timeout_max_ms = 30_000;
    };
    let mut members = cluster_tuned(3, 10_000, slow_timers).await;
    let refs: Vec<&Member> = members.iter().collect();
    let leader = leader_of(&refs).await;
    let term = members[leader].node.status().term;
    members[leader]
        .node
        .propose(put("before", "1"))
        .await
        .unwrap();
    let stopped = members.remove(leader);
    stopped.node.shutdown().await.unwrap();
    let stopped_at = Instant::now();

    let survivors: Vec<&Member> = members.iter().collect();
    let new = leader_of(&survivors).await;
    let elected_after = stopped_at.elapsed();
    assert!(survivors[new].node.status().term > term);
    assert!(
        elected_after < Duration::from_secs(10),
        "a new leader took {elected_after:?}"
    );
    let started: u64 = survivors
        .iter()
        .map(|m| m.node.status().leader_loss_elections)
        .sum();
    assert!(
        (1..=2).contains(&started),
        "each survivor starts at most one election for the lost leader: {started}"
    );
    survivors[1 - new]
        .node
        .propose(put("after", "2"))
        .await
        .unwrap();
    let data = converge(&survivors).await;
    assert_eq!(data.len(), 2);
    shutdown(members).await;
}

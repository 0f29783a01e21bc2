//! The network test bed itself (tests/src/netbed.rs): its hosts reach one
//! another, and each fault it makes changes reachability exactly as it
//! says; the real binaries inside see the faults; a paused node stops
//! answering and answers again once resumed; and nothing of a bed is left
//! behind, after a drop, a panic, or a run that was killed.
//!
//! Needs root; without it each test prints that it is skipped.

use futures_util::future::join_all;
use roompin_tests::netbed::{
    have_root, sweep_leftovers, Direction, Host, Netbed, NetbedOptions, PROBE_TIMEOUT,
};
use roompin_tests::PATIENCE;
use std::process::Command;
use std::time::Duration;

/// The tests of this file run one at a time: each bed's start sweeps
/// leftovers, which must not race the sweep test's fake leftovers.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a test body on its own runtime (so the serial lock is held outside
/// any async code).
fn block_on<F: std::future::Future>(body: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(body)
}

/// `GET /healthz` from the test process (the management network).
async fn healthz(url: &str) -> bool {
    let Ok(client) = reqwest::Client::builder()
        .no_proxy()
        .timeout(PROBE_TIMEOUT)
        .build()
    else {
        return false;
    };
    matches!(client.get(url).send().await, Ok(r) if r.status().is_success())
}

/// Every (from, to) pair's `reaches` (TCP) result, probed in parallel.
async fn tcp(bed: &Netbed, pairs: &[(Host, Host)]) -> Vec<((Host, Host), bool)> {
    let probes = pairs
        .iter()
        .map(|&(a, b)| async move { ((a, b), bed.reaches(a, b).await) });
    join_all(probes).await
}

/// Every (from, to) pair's `delivers` (UDP, one way) result, in parallel.
async fn udp(bed: &Netbed, pairs: &[(Host, Host)]) -> Vec<((Host, Host), bool)> {
    let probes = pairs
        .iter()
        .map(|&(a, b)| async move { ((a, b), bed.delivers(a, b).await) });
    join_all(probes).await
}

/// The pairs whose result is not `want`.
fn wrong(results: &[((Host, Host), bool)], want: impl Fn(Host, Host) -> bool) -> Vec<String> {
    results
        .iter()
        .filter(|((a, b), got)| *got != want(*a, *b))
        .map(|((a, b), got)| format!("{a}->{b}: {}", if *got { "reached" } else { "cut" }))
        .collect()
}

fn pairs(from: &[Host], to: &[Host]) -> Vec<(Host, Host)> {
    let mut out = Vec::new();
    for &a in from {
        for &b in to {
            if a != b {
                out.push((a, b));
            }
        }
    }
    out
}

fn namespaces() -> String {
    String::from_utf8_lossy(
        &Command::new("ip")
            .args(["netns", "list"])
            .output()
            .expect("ip netns list")
            .stdout,
    )
    .into_owned()
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", name])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn assert_gone(tag: &str, root_link: &str) {
    let left: Vec<String> = namespaces()
        .lines()
        .filter(|l| l.starts_with(&format!("{tag}-")))
        .map(str::to_owned)
        .collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    assert!(!link_exists(root_link), "{root_link} left behind");
}

#[test]
fn faults_change_reachability_as_they_say() {
    if !have_root("faults_change_reachability_as_they_say") {
        return;
    }
    let _serial = serial();
    block_on(async {
        let bed = Netbed::start(NetbedOptions::default()).await;
        let (b1, b2) = (Host::Balancer(0), Host::Balancer(1));
        let (a, b, c, d) = (Host::Node(0), Host::Node(1), Host::Node(2), Host::Node(3));
        let hosts = bed.hosts();
        let servers = bed.servers();
        assert_eq!(hosts.len(), 7);

        // Every host reaches every server over TCP, and every datagram arrives.
        let all_tcp = pairs(&hosts, &servers);
        let all_udp = pairs(&hosts, &hosts);
        let bad = wrong(&tcp(&bed, &all_tcp).await, |_, _| true);
        assert!(bad.is_empty(), "before any fault: {bad:?}");
        let bad = wrong(&udp(&bed, &all_udp).await, |_, _| true);
        assert!(bad.is_empty(), "before any fault: {bad:?}");

        // One way: b1's packets to node-a vanish; node-a's to b1 still arrive,
        // TCP between them stalls, and everyone else is untouched.
        bed.partition(b1, a, Direction::OneWay);
        let bad = wrong(&udp(&bed, &all_udp).await, |x, y| (x, y) != (b1, a));
        assert!(bad.is_empty(), "b1->node-a one way: {bad:?}");
        let bad = wrong(&tcp(&bed, &all_tcp).await, |x, y| {
            (x, y) != (b1, a) && (x, y) != (a, b1)
        });
        assert!(bad.is_empty(), "b1->node-a one way: {bad:?}");
        // The real binaries run on this network: b1 loses node-a, b2 keeps it.
        roompin_tests::eventually(PATIENCE, "b1 drops node-a, b2 keeps it", || async {
            let (o1, o2) = (
                bed.balancers[0].owners().await.ok()?,
                bed.balancers[1].owners().await.ok()?,
            );
            (!o1.contains(&"node-a".to_owned()) && o2.contains(&"node-a".to_owned())).then_some(())
        })
        .await;
        bed.heal();
        assert!(bed.blocked().is_empty());
        let bad = wrong(&udp(&bed, &all_udp).await, |_, _| true);
        assert!(bad.is_empty(), "after healing: {bad:?}");

        // Both ways between two nodes.
        bed.partition(a, b, Direction::Both);
        let bad = wrong(&udp(&bed, &all_udp).await, |x, y| {
            (x, y) != (a, b) && (x, y) != (b, a)
        });
        assert!(bad.is_empty(), "node-a<->node-b: {bad:?}");
        bed.heal();

        // node-b cut off from everyone; the management network still sees it.
        bed.isolate(b);
        let bad = wrong(&udp(&bed, &all_udp).await, |x, y| x != b && y != b);
        assert!(bad.is_empty(), "node-b isolated: {bad:?}");
        let bad = wrong(&tcp(&bed, &all_tcp).await, |x, y| x != b && y != b);
        assert!(bad.is_empty(), "node-b isolated: {bad:?}");
        assert!(
            healthz(&bed.nodes[1].url("/healthz")).await,
            "management cut too"
        );
        bed.heal();
        let bad = wrong(&tcp(&bed, &all_tcp).await, |_, _| true);
        assert!(bad.is_empty(), "after healing the isolation: {bad:?}");

        // node-c's link down, then up again by heal.
        bed.link_down(c);
        let bad = wrong(
            &tcp(&bed, &pairs(&[b1, b2, Host::Client], &[c])).await,
            |_, _| false,
        );
        assert!(bad.is_empty(), "node-c's link down: {bad:?}");
        bed.heal();
        let bad = wrong(&tcp(&bed, &pairs(&hosts, &[c])).await, |_, _| true);
        assert!(bad.is_empty(), "node-c's link up: {bad:?}");

        // A paused node stops answering, and answers again once resumed.
        let health = bed.nodes[3].url("/healthz");
        assert!(healthz(&health).await);
        bed.pause(d);
        assert!(!healthz(&health).await, "a paused node answered");
        assert!(!bed.reaches(b1, d).await, "a paused node answered b1");
        bed.resume(d);
        assert!(healthz(&health).await, "the resumed node does not answer");

        let (tag, root_link) = (bed.tag().to_owned(), bed.root_link().to_owned());
        assert!(namespaces().contains(&format!("{tag}-node-a")));
        assert!(link_exists(&root_link));
        drop(bed);
        assert_gone(&tag, &root_link);
    })
}

#[test]
fn a_client_runtime_lives_in_the_client_namespace() {
    if !have_root("a_client_runtime_lives_in_the_client_namespace") {
        return;
    }
    let _serial = serial();
    block_on(async {
        let options = NetbedOptions {
            nodes: 1,
            upstreams: vec![0],
            ..Default::default()
        };
        let bed = Netbed::start(options).await;
        let rt = bed.client_runtime(1);
        // From the client host, the balancer's data address answers and the
        // management network does not exist.
        let data = format!("http://{}:9090/healthz", bed.data_ip(Host::Balancer(0)));
        let mgmt = bed.nodes[0].url("/healthz");
        let (on_data, on_mgmt) = rt
            .handle()
            .spawn(async move { (healthz(&data).await, healthz(&mgmt).await) })
            .await
            .expect("probe task");
        assert!(on_data, "the client cannot reach b1 on the data network");
        assert!(!on_mgmt, "the client reached the management network");
        // A partition of the client host binds the runtime's sockets too.
        bed.partition(Host::Client, Host::Balancer(0), Direction::OneWay);
        let data = format!("http://{}:9090/healthz", bed.data_ip(Host::Balancer(0)));
        let cut = rt.handle().spawn(async move { healthz(&data).await }).await;
        assert_eq!(
            cut.ok(),
            Some(false),
            "the partition did not bind the client runtime"
        );
    })
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    if !have_root("a_panicking_test_leaves_nothing_behind") {
        return;
    }
    let _serial = serial();
    let names = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = names.clone();
    let outcome = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async move {
            let options = NetbedOptions {
                nodes: 1,
                upstreams: vec![0],
                ..Default::default()
            };
            let bed = Netbed::start(options).await;
            bed.isolate(Host::Node(0));
            *seen.lock().expect("lock") = Some((bed.tag().to_owned(), bed.root_link().to_owned()));
            panic!("a test fails while its bed is up");
        })
    })
    .join();
    assert!(outcome.is_err(), "the test body did not panic");
    let (tag, root_link) = names
        .lock()
        .expect("lock")
        .clone()
        .expect("the bed started");
    assert_gone(&tag, &root_link);
}

#[test]
fn leftovers_of_a_killed_run_are_swept_and_live_beds_are_not() {
    if !have_root("leftovers_of_a_killed_run_are_swept_and_live_beds_are_not") {
        return;
    }
    let _serial = serial();
    // 4194305 is above the kernel's largest pid_max: no such process lives.
    let dead = "rpnb-4194305-0";
    let live = format!("rpnb-{}-999", std::process::id());
    let ip = |args: &[&str]| {
        let ok = Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip {}", args.join(" "));
    };
    ip(&["netns", "add", &format!("{dead}-sw")]);
    ip(&["netns", "add", &format!("{dead}-node-a")]);
    ip(&[
        "link",
        "add",
        "rpm4194305x0",
        "type",
        "veth",
        "peer",
        "name",
        "up0",
        "netns",
        &format!("{dead}-sw"),
    ]);
    ip(&["netns", "add", &format!("{live}-sw")]);
    // A process the killed run left running inside its namespace.
    let mut orphan = Command::new("ip")
        .args(["netns", "exec", &format!("{dead}-node-a"), "sleep", "600"])
        .spawn()
        .expect("start an orphan");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !namespaces().contains(&format!("{dead}-node-a")) && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }

    sweep_leftovers();

    assert_gone(dead, "rpm4194305x0");
    let status = orphan.wait().expect("the orphan ends");
    assert!(!status.success(), "the orphan was not killed: {status}");
    assert!(
        namespaces().contains(&format!("{live}-sw")),
        "a live bed's namespace was swept"
    );
    ip(&["netns", "del", &format!("{live}-sw")]);
}

/// The recorder on the bed: clients on the client host through both
/// balancers, the poller in the test process over the management network,
/// and a clean verdict for a steady run (what the fault tests build on).
#[test]
fn recorders_on_the_bed_give_a_clean_verdict_when_nothing_fails() {
    use roompin_tests::cluster::TOKEN;
    use roompin_tests::history::History;
    use roompin_tests::recorder::{meeting_ids, Clients, NodePoller};
    if !have_root("recorders_on_the_bed_give_a_clean_verdict_when_nothing_fails") {
        return;
    }
    let _serial = serial();
    block_on(async {
        let bed = Netbed::start(NetbedOptions::default()).await;
        let rt = bed.client_runtime(2);
        let history = History::new();
        let poller = NodePoller::spawn(
            &history,
            &bed.poll_targets(),
            TOKEN,
            Duration::from_millis(50),
            &tokio::runtime::Handle::current(),
        );
        let clients = Clients::new(&history, bed.balancer_urls(), rt.handle());
        let meetings = meeting_ids(10);
        clients.populate(&meetings, 2, 1, 1);
        roompin_tests::eventually(PATIENCE, "every member welcomed", || async {
            let p = history.presence();
            (p.total == 30 && p.all_connected()).then_some(())
        })
        .await;
        history.step("steady");
        clients.publisher(&meetings, 20.0);
        roompin_tests::eventually(PATIENCE, "60 publishes acknowledged", || async {
            let acks = history
                .snapshot()
                .entries
                .iter()
                .filter(|e| matches!(e.op, roompin_tests::history::Op::PublishAcked { .. }))
                .count();
            (acks >= 60).then_some(())
        })
        .await;
        clients.stop_publishers();
        let settled = history.settle(PATIENCE).await;
        history.finish();
        clients.stop();
        poller.stop();
        let verdict = history.check();
        println!("{verdict}");
        assert!(settled, "{verdict}");
        verdict.assert_clean();
        let s = &verdict.summary;
        assert!(s.delivered >= 60 * 3, "{verdict}");
        assert_eq!(s.failed_samples, 0, "{verdict}");
        // Both balancers served the clients, and all four nodes held rooms.
        let log = history.snapshot();
        let used: std::collections::BTreeSet<usize> = log
            .entries
            .iter()
            .filter_map(|e| match e.op {
                roompin_tests::history::Op::Connect { balancer, .. } => Some(balancer),
                _ => None,
            })
            .collect();
        assert_eq!(used.len(), 2, "balancers used: {used:?}");
        let holding = history.presence().on_node.len();
        assert!(holding >= 3, "members on {holding} nodes only");
    })
}

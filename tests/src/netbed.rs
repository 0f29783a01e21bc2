//! A test bed of separate hosts: two balancers and (by default) four nodes,
//! each in its own network namespace with its own address on one bridge,
//! plus a client namespace, running the real binaries (`ip netns exec`).
//! Unlike loopback, a host here can lose its route to another: the bed
//! partitions any pair of hosts one way or both (nftables drop rules, so
//! packets vanish without a reset), cuts a host off from all the others,
//! takes its link down, heals all of that, and pauses and resumes any
//! process (SIGSTOP/SIGCONT).
//!
//! ```text
//!  data bridge 10.99.0.0/24 (the bed's faults apply here)
//!   b1 .11  b2 .12  node-a .21  node-b .22  node-c .23  node-d .24  client .100
//!  management bridge 10.213.K.0/24 (never faulted): the test process in the
//!   root namespace at .1 reaches every balancer's admin port and every node
//! ```
//!
//! The management network lets the test observe and steer hosts that the
//! data network has cut off: `/ring` of a balancer, `/control/rooms` of a
//! node (the [`crate::recorder::NodePoller`]), `/healthz`. Processes listen
//! on `0.0.0.0` but only ever dial data addresses (the TOMLs name nothing
//! else), so the faults bind everything the system under test does.
//!
//! Recording clients run on [`Netbed::client_runtime`]: a tokio runtime whose
//! threads joined the client namespace (`setns`), so their sockets are the
//! client host's.
//!
//! Cleanup: dropping the bed kills its processes and deletes its
//! namespaces, which takes every veth, bridge and nft rule with them; the
//! only root-namespace object is the management veth, deleted with its peer.
//! Drop runs when a test panics too. A run that was killed outright leaves
//! names with its pid in them (`rpnb-<pid>-…`, `rpm<pid>x…`); every new bed
//! first removes those whose pid is gone.
//!
//! Needs root; tests call [`have_root`] first and skip with a message
//! without it (CI runs as root). `scripts/prereqs test` installs iproute2
//! and nftables.

use crate::cluster::{BalancerProc, TOKEN};
use crate::process::{bin, target_dir, wait_healthy, NodeOptions, Proc};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::Signal;
use std::collections::BTreeSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Port of every node, and of every balancer's public listener.
pub const PORT: u16 = 8080;
/// Port of every balancer's admin listener.
pub const ADMIN_PORT: u16 = 9090;
/// How long a probe waits before calling a host unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

const NS_PREFIX: &str = "rpnb-";
const ROOT_LINK_PREFIX: &str = "rpm";
const NFT_TABLE: &str = "roompin_netbed";
const NODE_NAMES: [&str; 8] = [
    "node-a", "node-b", "node-c", "node-d", "node-e", "node-f", "node-g", "node-h",
];

static BEDS: AtomicUsize = AtomicUsize::new(0);

/// One host of the bed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {
    /// Balancer `b1` is `Balancer(0)`.
    Balancer(usize),
    /// `node-a` is `Node(0)`.
    Node(usize),
    /// Where the recording clients run.
    Client,
}

impl Host {
    /// The host's name: `b1`, `node-a`, `client`.
    pub fn name(self) -> String {
        match self {
            Host::Balancer(i) => format!("b{}", i + 1),
            Host::Node(i) => NODE_NAMES.get(i).unwrap_or(&"node-x").to_string(),
            Host::Client => "client".into(),
        }
    }

    /// The last octet of its addresses.
    fn octet(self) -> u8 {
        match self {
            Host::Balancer(i) => 11 + i as u8,
            Host::Node(i) => 21 + i as u8,
            Host::Client => 100,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Which way a partition drops packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Packets from the first host to the second vanish; the other way
    /// still flows (so TCP between them stalls both ways, UDP only one).
    OneWay,
    Both,
}

/// What the bed starts.
#[derive(Clone, Debug)]
pub struct NetbedOptions {
    /// Nodes started (`node-a`…), at most 8.
    pub nodes: usize,
    /// Indices of the nodes in the balancers' first TOML.
    pub upstreams: Vec<usize>,
    /// Extra TOML for every node's config file.
    pub node_toml: String,
    /// The balancers' `[health]` table body.
    pub health_toml: String,
    /// Extra top-level TOML lines for both balancers.
    pub balancer_toml: String,
    /// Nodes and balancers share the control token (room moves).
    pub control: bool,
}

impl Default for NetbedOptions {
    fn default() -> Self {
        NetbedOptions {
            nodes: 4,
            upstreams: vec![0, 1, 2, 3],
            node_toml: String::new(),
            health_toml:
                "interval_ms = 200\ntimeout_ms = 1000\nunhealthy_after = 3\nhealthy_after = 2\n"
                    .into(),
            balancer_toml: "push_interval_ms = 500\n".into(),
            control: true,
        }
    }
}

/// A node of the bed.
pub struct BedNode {
    pub id: String,
    /// Where balancers and peers reach it.
    pub data: SocketAddr,
    /// Where the test process reaches it.
    pub mgmt: SocketAddr,
    pub options: NodeOptions,
    proc: Option<Proc>,
    config: PathBuf,
}

impl BedNode {
    /// `http://<mgmt>:8080<path>`, for the test process.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.mgmt)
    }

    /// Its process (`None` after [`Netbed::kill_node`]).
    pub fn proc(&self) -> Option<&Proc> {
        self.proc.as_ref()
    }
}

/// The running bed. Dropping it removes everything it made.
pub struct Netbed {
    tag: String,
    mgmt_net: [u8; 3],
    root_link: String,
    /// The switch namespace first, then one per host.
    namespaces: Vec<String>,
    /// `admin` is the management address (the test process reads `/ring`
    /// through it); `public` the data address clients use.
    pub balancers: Vec<BalancerProc>,
    pub nodes: Vec<BedNode>,
    blocks: Mutex<BTreeSet<(Host, Host)>>,
    down: Mutex<BTreeSet<Host>>,
    pub options: NetbedOptions,
}

/// Whether this process may build a bed; if not, prints why the test
/// `test` is skipped.
pub fn have_root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!(
            "SKIPPED {test}: the network test bed needs root (ip netns, veth, nft); CI runs it as root"
        );
    }
    root
}

/// Runs a command, failing with its stderr.
fn run(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {cmd}: {e} (scripts/prereqs test installs it)"))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip` with these arguments; panics with the reason (a bed that cannot be
/// built is a broken test machine, not a test result).
fn ip(args: &[&str]) {
    if let Err(e) = run("ip", args) {
        panic!("netbed: {e}");
    }
}

/// Feeds a ruleset to `nft -f -` inside `ns`.
fn nft(ns: &str, ruleset: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot run nft in {ns}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(ruleset.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "nft in {ns} failed: {}\n{ruleset}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Whether `pid` is a live process (a zombie, whose run has ended but not
/// been reaped yet, is not).
fn pid_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "<pid> (<comm>) <state> ...": the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Removes what beds of dead processes left behind: their namespaces (and
/// any process still inside), and root-namespace management links.
pub fn sweep_leftovers() {
    let list = run("ip", &["netns", "list"]).unwrap_or_default();
    for line in list.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(NS_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        remove_namespace(name);
    }
    let links = run("ip", &["-o", "link", "show"]).unwrap_or_default();
    for line in links.lines() {
        // "12: rpm1234x0@if3: <...>"
        let Some(name) = line.split(':').nth(1).map(|n| n.trim()) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        let Some(pid) = name
            .strip_prefix(ROOT_LINK_PREFIX)
            .and_then(|rest| rest.split('x').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !pid_alive(pid) {
            let _ = run("ip", &["link", "del", name]);
        }
    }
}

/// Kills whatever still runs inside `ns`, then deletes it.
fn remove_namespace(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    let _ = run("ip", &["netns", "del", ns]);
}

/// Picks a free management /24 (10.213.K.0) and creates the root end of
/// the management link, under a file lock so that beds of parallel test
/// processes do not pick the same one.
fn claim_mgmt_net(root_link: &str, switch_ns: &str) -> [u8; 3] {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/roompin-netbed.lock")
        .unwrap_or_else(|e| panic!("netbed: cannot open its lock file: {e}"));
    if let Err(e) = lock.lock() {
        panic!("netbed: cannot lock /run/roompin-netbed.lock: {e}");
    }
    let addrs = run("ip", &["-o", "-4", "addr", "show"]).unwrap_or_default();
    let k = (0..=255u8)
        .find(|k| !addrs.contains(&format!(" 10.213.{k}.1/")))
        .unwrap_or_else(|| panic!("netbed: no free 10.213.K.0/24 for the management network"));
    ip(&[
        "link", "add", root_link, "type", "veth", "peer", "name", "up0", "netns", switch_ns,
    ]);
    ip(&[
        "-n", switch_ns, "link", "set", "up0", "master", "brmgmt", "up",
    ]);
    ip(&["addr", "add", &format!("10.213.{k}.1/24"), "dev", root_link]);
    ip(&["link", "set", root_link, "up"]);
    drop(lock);
    [10, 213, k]
}

impl Netbed {
    /// Builds the namespaces and networks, starts the nodes and the two
    /// balancers, and waits until both balancers own with every upstream.
    pub async fn start(options: NetbedOptions) -> Netbed {
        assert!(options.nodes <= NODE_NAMES.len(), "at most 8 nodes");
        sweep_leftovers();
        let n = BEDS.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{NS_PREFIX}{pid}-{n}");
        let root_link = format!("{ROOT_LINK_PREFIX}{pid}x{n}");
        let switch = format!("{tag}-sw");
        let mut bed = Netbed {
            tag,
            mgmt_net: [0, 0, 0],
            root_link: root_link.clone(),
            namespaces: Vec::new(),
            balancers: Vec::new(),
            nodes: Vec::new(),
            blocks: Mutex::new(BTreeSet::new()),
            down: Mutex::new(BTreeSet::new()),
            options,
        };
        // From here on, a panic drops `bed`, which removes what exists.
        ip(&["netns", "add", &switch]);
        bed.namespaces.push(switch.clone());
        ip(&["-n", &switch, "link", "set", "lo", "up"]);
        for br in ["brdata", "brmgmt"] {
            ip(&["-n", &switch, "link", "add", br, "type", "bridge"]);
            ip(&["-n", &switch, "link", "set", br, "up"]);
        }
        bed.mgmt_net = claim_mgmt_net(&root_link, &switch);
        for host in bed.hosts() {
            bed.add_host(host, &switch);
        }
        for i in 0..bed.options.nodes {
            bed.start_node(i).await;
        }
        for b in 0..2 {
            let upstreams = bed.options.upstreams.clone();
            let toml = bed.balancer_toml(b, &upstreams);
            let config = bed.logs_dir().join(format!("{}-b{}.toml", bed.tag, b + 1));
            std::fs::write(&config, toml).expect("write balancer config");
            let proc = bed.spawn_balancer(b, &config).await;
            bed.balancers.push(proc);
        }
        let want = bed.options.upstreams.len();
        for b in &bed.balancers {
            crate::eventually(crate::PATIENCE, "every upstream owns in /ring", || async {
                (b.owners().await.ok()?.len() == want).then_some(())
            })
            .await;
        }
        bed
    }

    /// The prefix of every namespace of this bed (`rpnb-<pid>-<n>`).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The bed's one link in the root namespace (the management veth).
    pub fn root_link(&self) -> &str {
        &self.root_link
    }

    /// Every host: the balancers, the nodes, the client.
    pub fn hosts(&self) -> Vec<Host> {
        let mut hosts = vec![Host::Balancer(0), Host::Balancer(1)];
        hosts.extend((0..self.options.nodes).map(Host::Node));
        hosts.push(Host::Client);
        hosts
    }

    /// The hosts that serve HTTP (`/healthz`): balancers and nodes.
    pub fn servers(&self) -> Vec<Host> {
        self.hosts()
            .into_iter()
            .filter(|h| *h != Host::Client)
            .collect()
    }

    /// The namespace of a host.
    pub fn namespace(&self, host: Host) -> String {
        format!("{}-{}", self.tag, host.name())
    }

    /// A host's address on the data network.
    pub fn data_ip(&self, host: Host) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, 0, host.octet())
    }

    /// A host's address on the management network (the client has none).
    pub fn mgmt_ip(&self, host: Host) -> Ipv4Addr {
        let [a, b, c] = self.mgmt_net;
        Ipv4Addr::new(a, b, c, host.octet())
    }

    /// The port `/healthz` answers on: a node's port, a balancer's admin.
    pub fn health_port(&self, host: Host) -> u16 {
        match host {
            Host::Balancer(_) => ADMIN_PORT,
            _ => PORT,
        }
    }

    fn logs_dir(&self) -> PathBuf {
        let dir = target_dir().join("test-logs");
        let _ = std::fs::create_dir_all(&dir);
        dir
    }

    fn add_host(&mut self, host: Host, switch: &str) {
        let ns = self.namespace(host);
        ip(&["netns", "add", &ns]);
        self.namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let name = host.name();
        let mut links = vec![("d", "eth0", "brdata", self.data_ip(host))];
        if host != Host::Client {
            links.push(("m", "mgmt0", "brmgmt", self.mgmt_ip(host)));
        }
        for (side, inner, bridge, addr) in links {
            let outer = format!("{side}-{name}");
            ip(&[
                "-n", switch, "link", "add", &outer, "type", "veth", "peer", "name", inner,
                "netns", &ns,
            ]);
            ip(&["-n", switch, "link", "set", &outer, "master", bridge, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                inner,
            ]);
            ip(&["-n", &ns, "link", "set", inner, "up"]);
        }
        let table = format!(
            "table inet {NFT_TABLE} {{\n  chain input {{ type filter hook input priority 0; policy accept; }}\n}}\n"
        );
        if let Err(e) = nft(&ns, &table) {
            panic!("netbed: {e}");
        }
    }

    /// `ip netns exec <host's namespace> <binary> <args>`.
    fn command(&self, host: Host, binary: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.arg("netns")
            .arg("exec")
            .arg(self.namespace(host))
            .arg(bin(binary));
        cmd
    }

    /// Starts (or restarts) node `i` and waits for its `/healthz`.
    pub async fn start_node(&mut self, i: usize) {
        let host = Host::Node(i);
        let id = host.name();
        let options = NodeOptions {
            toml: self.options.node_toml.clone(),
            control_token: self.options.control.then(|| TOKEN.to_owned()),
        };
        let config = self.logs_dir().join(format!("{}-{id}.toml", self.tag));
        std::fs::write(&config, crate::process::node_toml(&options.toml))
            .expect("write node config");
        let mut cmd = self.command(host, "roompin-node");
        cmd.arg("--id")
            .arg(&id)
            .arg("--listen")
            .arg(format!("0.0.0.0:{PORT}"))
            .arg("--config")
            .arg(&config);
        if let Some(token) = &options.control_token {
            cmd.env("ROOMPIN_CONTROL_TOKEN", token);
        }
        let proc = Proc::spawn(&format!("{}-{id}", self.tag), cmd);
        let mgmt = SocketAddr::V4(SocketAddrV4::new(self.mgmt_ip(host), PORT));
        wait_healthy(mgmt, crate::PATIENCE)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", proc.logs()));
        let node = BedNode {
            id,
            data: SocketAddr::V4(SocketAddrV4::new(self.data_ip(host), PORT)),
            mgmt,
            options,
            proc: Some(proc),
            config,
        };
        match self.nodes.get_mut(i) {
            Some(slot) => *slot = node,
            None => self.nodes.push(node),
        }
    }

    /// kill -9 of node `i` (its memory is gone).
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut p) = self.nodes.get_mut(i).and_then(|n| n.proc.take()) {
            p.kill9();
        }
    }

    async fn spawn_balancer(&self, b: usize, config: &Path) -> BalancerProc {
        let host = Host::Balancer(b);
        let mut cmd = self.command(host, "roompin-balancer");
        cmd.arg("--config").arg(config);
        let proc = Proc::spawn(&format!("{}-{}", self.tag, host.name()), cmd);
        let admin = SocketAddr::V4(SocketAddrV4::new(self.mgmt_ip(host), ADMIN_PORT));
        wait_healthy(admin, crate::PATIENCE)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", proc.logs()));
        BalancerProc {
            proc,
            public: SocketAddr::V4(SocketAddrV4::new(self.data_ip(host), PORT)),
            admin,
            config: config.to_path_buf(),
        }
    }

    /// Restarts balancer `b` on its current TOML.
    pub async fn restart_balancer(&mut self, b: usize) {
        let config = self.balancers[b].config.clone();
        self.balancers[b].proc.kill9();
        self.balancers[b] = self.spawn_balancer(b, &config).await;
    }

    /// A TOML for balancer `b` with nodes `upstreams` (indices).
    pub fn balancer_toml(&self, b: usize, upstreams: &[usize]) -> String {
        let o = &self.options;
        let mut toml = format!(
            "listen = \"0.0.0.0:{PORT}\"\nadmin_listen = \"0.0.0.0:{ADMIN_PORT}\"\nbalancer_id = \"{}\"\n{}",
            Host::Balancer(b).name(),
            o.balancer_toml
        );
        if o.control {
            toml.push_str(&format!("control_token = \"{TOKEN}\"\n"));
        } else {
            toml.push_str("moves = false\n");
        }
        toml.push_str(&format!("\n[health]\n{}\n", o.health_toml));
        for &i in upstreams {
            let host = Host::Node(i);
            toml.push_str(&format!(
                "[[upstream]]\nid = \"{}\"\naddr = \"{}:{PORT}\"\n\n",
                host.name(),
                self.data_ip(host)
            ));
        }
        toml
    }

    /// Replaces balancer `b`'s TOML (it reloads by itself).
    pub fn write_balancer_config(&self, b: usize, toml: &str) {
        let path = &self.balancers[b].config;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, toml).expect("write config");
        std::fs::rename(&tmp, path).expect("replace config");
    }

    /// Base URLs of the balancers on the data network, for clients on
    /// [`Netbed::client_runtime`].
    pub fn balancer_urls(&self) -> Vec<String> {
        self.balancers
            .iter()
            .map(|b| format!("http://{}", b.public))
            .collect()
    }

    /// `(node id, management base URL)` of every node, for a
    /// [`crate::recorder::NodePoller`] in the test process.
    pub fn poll_targets(&self) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .map(|n| (n.id.clone(), format!("http://{}", n.mgmt)))
            .collect()
    }

    fn proc_of(&self, host: Host) -> Option<&Proc> {
        match host {
            Host::Balancer(b) => self.balancers.get(b).map(|b| &b.proc),
            Host::Node(i) => self.nodes.get(i).and_then(|n| n.proc.as_ref()),
            Host::Client => None,
        }
    }

    /// Sends `sig` to the host's process (e.g. SIGTERM for a drain).
    pub fn signal(&self, host: Host, sig: Signal) {
        match self.proc_of(host) {
            Some(p) => p.signal(sig),
            None => panic!("netbed: {host} runs no process"),
        }
    }

    /// SIGSTOP: the process stalls, its sockets stay open.
    pub fn pause(&self, host: Host) {
        self.signal(host, Signal::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&self, host: Host) {
        self.signal(host, Signal::SIGCONT);
    }

    /// Drops packets from `from` to `to` (and back, for `Both`).
    pub fn partition(&self, from: Host, to: Host, direction: Direction) {
        {
            let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
            blocks.insert((from, to));
            if direction == Direction::Both {
                blocks.insert((to, from));
            }
        }
        self.apply_rules();
    }

    /// Cuts `host` off from every other host (both ways), by drop rules.
    pub fn isolate(&self, host: Host) {
        {
            let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
            for other in self.hosts().into_iter().filter(|h| *h != host) {
                blocks.insert((host, other));
                blocks.insert((other, host));
            }
        }
        self.apply_rules();
    }

    /// Takes `host`'s data link down: its own sends fail at once
    /// (unlike [`Netbed::isolate`], where they vanish).
    pub fn link_down(&self, host: Host) {
        ip(&["-n", &self.namespace(host), "link", "set", "eth0", "down"]);
        self.down
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(host);
    }

    /// Brings `host`'s data link back up.
    pub fn link_up(&self, host: Host) {
        ip(&["-n", &self.namespace(host), "link", "set", "eth0", "up"]);
        self.down
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&host);
    }

    /// Removes every partition and brings every link up.
    pub fn heal(&self) {
        self.blocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.apply_rules();
        let down: Vec<Host> = self
            .down
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect();
        for host in down {
            self.link_up(host);
        }
    }

    /// The directed pairs whose packets are dropped now.
    pub fn blocked(&self) -> Vec<(Host, Host)> {
        self.blocks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// Rewrites every host's input chain from `blocks`: a packet from A to B
    /// is dropped on B's input, so that A's send succeeds and the packet
    /// just vanishes (no reset, no local error).
    fn apply_rules(&self) {
        let blocks = self.blocked();
        for to in self.hosts() {
            let mut ruleset = format!("flush chain inet {NFT_TABLE} input\n");
            for (from, _) in blocks.iter().filter(|(_, t)| *t == to) {
                ruleset.push_str(&format!(
                    "add rule inet {NFT_TABLE} input ip saddr {} drop\n",
                    self.data_ip(*from)
                ));
            }
            if let Err(e) = nft(&self.namespace(to), &ruleset) {
                panic!("netbed: {e}");
            }
        }
    }

    /// A tokio runtime whose threads are in the client namespace: sockets
    /// its tasks open are the client host's. Run the recording clients on
    /// its handle.
    pub fn client_runtime(&self, threads: usize) -> NsRuntime {
        NsRuntime::new(&self.namespace(Host::Client), threads)
    }

    /// Whether `from` gets an HTTP answer to `GET /healthz` from `to` on the
    /// data network within [`PROBE_TIMEOUT`] (TCP: needs both directions).
    pub async fn reaches(&self, from: Host, to: Host) -> bool {
        let ns = self.namespace(from);
        let url = format!(
            "http://{}:{}/healthz",
            self.data_ip(to),
            self.health_port(to)
        );
        tokio::task::spawn_blocking(move || in_namespace(&ns, move || http_ok(&url)))
            .await
            .unwrap_or(false)
    }

    /// Whether a UDP datagram from `from` arrives at `to` within 300 ms:
    /// one direction only, so it shows one-way partitions.
    pub async fn delivers(&self, from: Host, to: Host) -> bool {
        let (from_ns, to_ns) = (self.namespace(from), self.namespace(to));
        let (src, dst) = (self.data_ip(from), self.data_ip(to));
        tokio::task::spawn_blocking(move || udp_delivers(&from_ns, src, &to_ns, dst))
            .await
            .unwrap_or(false)
    }
}

impl Drop for Netbed {
    fn drop(&mut self) {
        for b in &mut self.balancers {
            b.proc.kill9();
        }
        for n in &mut self.nodes {
            if let Some(mut p) = n.proc.take() {
                p.kill9();
            }
            let _ = std::fs::remove_file(&n.config);
        }
        // Hosts first, the switch (which holds the root link's peer) last.
        for ns in self.namespaces.iter().rev() {
            remove_namespace(ns);
        }
        if run("ip", &["link", "show", &self.root_link]).is_ok() {
            let _ = run("ip", &["link", "del", &self.root_link]);
        }
    }
}

/// Runs `f` on a new thread that joined the namespace `ns`.
pub fn in_namespace<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    let inner = path.clone();
    std::thread::spawn(move || {
        enter(&inner);
        f()
    })
    .join()
    .unwrap_or_else(|_| panic!("a probe in {path} panicked"))
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &str) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("netbed: open {path}: {e}"));
    if let Err(e) = setns(&file, CloneFlags::CLONE_NEWNET) {
        panic!("netbed: setns {path}: {e}");
    }
}

fn http_ok(url: &str) -> bool {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return false;
    };
    rt.block_on(async {
        let Ok(client) = reqwest::Client::builder()
            .no_proxy()
            .timeout(PROBE_TIMEOUT)
            .build()
        else {
            return false;
        };
        matches!(client.get(url).send().await, Ok(r) if r.status().is_success())
    })
}

fn udp_delivers(from_ns: &str, src: Ipv4Addr, to_ns: &str, dst: Ipv4Addr) -> bool {
    let Some(socket) = in_namespace(to_ns, move || UdpSocket::bind((dst, 0)).ok()) else {
        return false;
    };
    let Ok(port) = socket.local_addr().map(|a| a.port()) else {
        return false;
    };
    let _ = socket.set_read_timeout(Some(Duration::from_millis(300)));
    let sent = in_namespace(from_ns, move || {
        let s = UdpSocket::bind((src, 0)).ok()?;
        // Three tries: the first may wait on ARP.
        for _ in 0..3 {
            s.send_to(b"netbed", (dst, port)).ok()?;
        }
        Some(())
    });
    if sent.is_none() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(socket.recv_from(&mut buf), Ok((n, from)) if &buf[..n] == b"netbed" && from.ip() == std::net::IpAddr::V4(src))
}

/// A multi-thread tokio runtime whose threads (workers and blocking pool)
/// live in one network namespace. Dropping it shuts it down without
/// blocking, so it may be dropped inside an async test.
pub struct NsRuntime {
    rt: Option<tokio::runtime::Runtime>,
}

impl NsRuntime {
    /// A runtime of `threads` workers in the namespace named `ns`.
    pub fn new(ns: &str, threads: usize) -> NsRuntime {
        let path = format!("/run/netns/{ns}");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .on_thread_start(move || {
                // A thread outside the namespace would quietly test the
                // wrong network: stop the run instead.
                let ok = std::fs::File::open(&path)
                    .ok()
                    .is_some_and(|f| setns(&f, CloneFlags::CLONE_NEWNET).is_ok());
                if !ok {
                    eprintln!("netbed: cannot enter {path}; aborting");
                    std::process::abort();
                }
            })
            .build()
            .unwrap_or_else(|e| panic!("netbed: cannot build the client runtime: {e}"));
        NsRuntime { rt: Some(rt) }
    }

    /// Where to spawn tasks (give it to [`crate::recorder::Clients::new`]).
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.rt
            .as_ref()
            .map(|rt| rt.handle().clone())
            .expect("the runtime lives until drop")
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

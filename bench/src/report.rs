//! The tables of docs/BENCHMARKS.md (between its `bench:results` markers)
//! and the plot docs/benchmarks.svg, both from one results JSON.

use anyhow::Context;
use plotters::prelude::*;
use serde_json::Value;
use std::fmt::Write as _;
use std::path::Path;

use crate::loadgen::f;

pub const BEGIN: &str =
    "<!-- bench:results:begin (written by roompin-bench; edit outside these markers) -->";
pub const END: &str = "<!-- bench:results:end -->";

/// (YYYY-MM-DD, HH:MM:SS) in UTC, from the system clock.
pub fn utc_now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
    )
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "–".into()
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "**met**"
    } else {
        "**missed**"
    }
}

fn thousands(x: f64) -> String {
    let n = x.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// "0" or "0, 1" for a list of CPUs.
fn cpus(v: &Value) -> String {
    let list: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c.to_string())
        .collect();
    if list.is_empty() {
        "?".into()
    } else {
        list.join(", ")
    }
}

/// "(load average 1.2 → 2.3)" for a scenario's heading.
fn load(v: &Value) -> String {
    match v["loadavg_1min"].as_array().map(|a| a.as_slice()) {
        Some([a, b]) => format!(
            " (1-min load average {:.1} → {:.1})",
            a.as_f64().unwrap_or(0.0),
            b.as_f64().unwrap_or(0.0)
        ),
        _ => String::new(),
    }
}

/// Markdown for every scenario in `doc`.
pub fn tables(doc: &Value, json_path: &Path, root: &Path) -> String {
    let mut o = String::new();
    let sc = &doc["scenarios"];
    let m = &doc["machine"];
    let rel = json_path.strip_prefix(root).unwrap_or(json_path);
    let _ = writeln!(
        o,
        "Run of {} {} UTC, {:.0} s in all; raw numbers: [`{}`]({}).",
        doc["date"].as_str().unwrap_or(""),
        doc["time_utc"].as_str().unwrap_or(""),
        f(doc, "wall_s"),
        rel.display(),
        Path::new("..").join(rel).display()
    );
    let _ = writeln!(
        o,
        "Machine: {} × {}, {} GiB, {}, kernel {}; load average {} at the start, {} at the end.\n",
        m["cores"],
        m["cpu"].as_str().unwrap_or("?"),
        m["memory_gib"],
        m["os"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"),
        m["loadavg_at_start"].as_str().unwrap_or("?"),
        doc["loadavg_at_end"].as_str().unwrap_or("?")
    );
    let v = &m["versions"];
    let _ = writeln!(
        o,
        "Versions: roompin {} ({}), {}, nginx {}, {}, node {}, socket.io {}, ws {}.\n",
        v["roompin"].as_str().unwrap_or("?"),
        v["git"].as_str().unwrap_or("?"),
        v["rustc"].as_str().unwrap_or("?"),
        v["nginx"].as_str().unwrap_or("?"),
        v["haproxy"].as_str().unwrap_or("?"),
        v["node"].as_str().unwrap_or("?"),
        v["socket.io"].as_str().unwrap_or("?"),
        v["ws"].as_str().unwrap_or("?")
    );
    let _ = writeln!(o, "![p99 against load, per system](benchmarks.svg)\n");

    let mut client_bound_notes: Vec<String> = Vec::new();
    let px = &sc["proxy_overhead"];
    if px["summary"].is_object() {
        let fx = &px["summary"]["fixed"];
        let mr = &px["summary"]["max_rate"];
        let _ = writeln!(o, "### 1. Proxy overhead{}\n", load(px));
        let _ = writeln!(o, "Round trips through rooms of one at {} round trips/s ({} connections × {}/s), median of {} alternating rounds of {} each. Proxies and nodes on CPU {}, the loadgen on CPU {}; the CPU shares are of those cores over the window:\n",
            thousands(f(px, "params.fixed.offered_per_sec")), f(px, "params.fixed.conns"), f(px, "params.fixed.rate_per_conn"), f(px, "params.fixed.rounds"), px["params"]["fixed"]["duration"].as_str().unwrap_or("?"),
            cpus(&px["params"]["server_cpus"]), cpus(&px["params"]["client_cpus"]));
        let _ = writeln!(o, "| system | p50 ms | p99 ms | p99.9 ms | p99 spread over rounds | lost | p99 vs nginx | p99 vs HAProxy | proxy CPU µs / round trip | CPU vs nginx | CPU vs HAProxy | servers' CPU share | loadgen CPU share |");
        let _ = writeln!(
            o,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        let nginx_p99 = f(fx, "nginx.p99_us");
        let haproxy_p99 = f(fx, "haproxy.p99_us");
        let cpu_of = |s: &str| -> f64 {
            // The proxy's own CPU per round trip at the fixed rate (window
            // and drain over the round trips sent), median of the rounds.
            median_of(
                px["fixed_runs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|r| r["system"] == s && f(&r["result"], "sent") > 0.0)
                    .map(|r| f(&r["result"], "proxy_cpu_seconds") / f(&r["result"], "sent") * 1e6)
                    .collect(),
            )
        };
        let (nginx_cpu, haproxy_cpu) = (cpu_of("nginx"), cpu_of("haproxy"));
        for s in ["roompin", "nginx", "haproxy", "direct"] {
            let x = &fx[s];
            let (cpu, vs_n, vs_h) = if s == "direct" {
                ("–".to_owned(), "–".to_owned(), "–".to_owned())
            } else {
                let c = cpu_of(s);
                (
                    format!("{c:.0}"),
                    ratio(c, nginx_cpu),
                    ratio(c, haproxy_cpu),
                )
            };
            let _ = writeln!(
                o,
                "| {s} | {} | {} | {} | {:.0}% | {} | {} | {} | {cpu} | {vs_n} | {vs_h} | {:.0}% | {:.0}%{} |",
                ms(f(x, "p50_us")),
                ms(f(x, "p99_us")),
                ms(f(x, "p999_us")),
                f(x, "p99_spread") * 100.0,
                f(x, "lost"),
                ratio(f(x, "p99_us"), nginx_p99),
                ratio(f(x, "p99_us"), haproxy_p99),
                f(x, "server_cpu_share") * 100.0,
                f(x, "loadgen_cpu_share") * 100.0,
                if f(x, "client_bound_runs") > 0.0 { " (client-bound)" } else { "" },
            );
        }
        let _ = writeln!(o, "\nMax rate (p99 ≤ 10 ms, the offered rate rising ×{} from {}/s, {} rounds, a system out after {} failing steps in a row). A limit is *client-bound* when the step that failed had the loadgen at ≥ {:.0}% of its core: then it is the loadgen's limit, not the system's.\n",
            f(px, "params.ladder.factor"), thousands(f(px, "params.ladder.start_per_sec")), f(px, "params.ladder.rounds"), f(px, "params.ladder.stops_after_failed_steps_in_a_row").max(1.0), f(px, "params.client_bound_share") * 100.0);
        let _ = writeln!(
            o,
            "| system | max rate, median of rounds | each round | vs nginx | vs HAProxy | limit |"
        );
        let _ = writeln!(o, "| --- | ---: | ---: | ---: | ---: | --- |");
        let nginx_max = f(mr, "nginx.max_delivered_per_sec");
        let haproxy_max = f(mr, "haproxy.max_delivered_per_sec");
        for s in ["roompin", "nginx", "haproxy", "direct"] {
            let max = f(mr, &format!("{s}.max_delivered_per_sec"));
            let capped = mr[s]["reached_limit"] == false;
            let rounds: Vec<String> = mr[s]["per_round"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| thousands(v.as_f64().unwrap_or(0.0)))
                .collect();
            let bound: Vec<String> = mr[s]["limit_client_bound_rounds"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    if b == true {
                        "client-bound".to_owned()
                    } else {
                        "server".to_owned()
                    }
                })
                .collect();
            let limit = if capped {
                "not reached".to_owned()
            } else {
                bound.join(", ")
            };
            let _ = writeln!(
                o,
                "| {s} | {}{} | {} | {} | {} | {limit} |",
                if capped { "≥ " } else { "" },
                thousands(max),
                rounds.join(", "),
                ratio(max, nginx_max),
                ratio(max, haproxy_max),
            );
        }
        let rp = f(fx, "roompin.p99_us");
        let rmax = f(mr, "roompin.max_delivered_per_sec");
        let rcpu = cpu_of("roompin");
        let max_bound =
            mr["roompin"]["client_bound"] == true || mr["nginx"]["client_bound"] == true;
        if max_bound {
            client_bound_notes.push("the proxy max-rate verdict (roompin's or nginx's limiting step had the loadgen saturated)".into());
        }
        if f(fx, "roompin.client_bound_runs") > 0.0 || f(fx, "nginx.client_bound_runs") > 0.0 {
            client_bound_notes.push("the fixed-rate p99 and CPU verdicts (a fixed-rate round had the loadgen saturated)".into());
        }
        let _ = writeln!(o, "\nTargets: roompin's p99 ≤ nginx's: {} ({} vs {} ms); proxy CPU per round trip ≤ 0.8× nginx's: {} ({rcpu:.0} vs {nginx_cpu:.0} µs, {}); max rate ≥ nginx's: {}{} ({} vs {} round trips/s).\n",
            verdict(rp > 0.0 && rp <= nginx_p99), ms(rp), ms(nginx_p99),
            verdict(rcpu > 0.0 && rcpu <= 0.8 * nginx_cpu), ratio(rcpu, nginx_cpu),
            verdict(rmax > 0.0 && rmax >= nginx_max), if max_bound { ", client-bound" } else { "" }, thousands(rmax), thousands(nginx_max));
    }

    let fan = &sc["fanout"];
    if fan["summary"].is_object() {
        let s = &fan["summary"]["systems"];
        let _ = writeln!(o, "### 2. Fan-out{}\n", load(fan));
        let _ = writeln!(o, "One room of {} members, one publisher; the rate rises ×{} per step from {} msg/s until p99 passes 50 ms. CPU is the server process's (user + system) over the window and drain, per million chat frames delivered; \"at {} msg/s\" is the highest rate every system passed.\n",
            f(fan, "params.members"), f(fan, "params.factor"), f(fan, "params.start_rate"), f(fan, "summary.common_rate").round());
        let _ = writeln!(o, "| system | max frames/s (p99 ≤ 50 ms) | at msg/s | p99 ms there | CPU s / M frames there | CPU s / M frames at {} msg/s | loadgen CPU s there | loadgen CPU share at the failing step | limit | roompin's max vs this |", f(fan, "summary.common_rate").round());
        let _ = writeln!(
            o,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
        );
        let rmax = f(s, "roompin.max_frames_per_sec");
        for name in ["roompin", "ws", "socketio"] {
            let x = &s[name];
            let capped = x["reached_limit"] == false;
            let limit = if capped {
                "not reached"
            } else if x["client_bound"] == true {
                "client-bound"
            } else {
                "server"
            };
            let _ = writeln!(
                o,
                "| {name} | {}{} | {:.0} | {} | {:.2} | {:.2} | {:.1} | {:.0}% | {limit} | {} |",
                if capped { "≥ " } else { "" },
                thousands(f(x, "max_frames_per_sec")),
                f(x, "max_at_rate"),
                ms(f(x, "p99_us_at_max")),
                f(x, "cpu_seconds_per_million_frames_at_max"),
                f(x, "cpu_seconds_per_million_frames_at_common_rate"),
                f(x, "loadgen_cpu_seconds_at_max"),
                f(x, "limit_loadgen_cpu_share") * 100.0,
                ratio(rmax, f(x, "max_frames_per_sec"))
            );
        }
        let sio = f(s, "socketio.max_frames_per_sec");
        let wsx = f(s, "ws.max_frames_per_sec");
        let fan_bound: Vec<&str> = ["roompin", "ws", "socketio"]
            .into_iter()
            .filter(|n| s[*n]["client_bound"] == true)
            .collect();
        if !fan_bound.is_empty() {
            client_bound_notes.push(format!(
                "the fan-out verdicts (client-bound limit for {})",
                fan_bound.join(", ")
            ));
        }
        let _ = writeln!(
            o,
            "\nTargets: ≥ 5× Socket.IO: {} ({}); ≥ 1.5× ws: {} ({}).\n",
            verdict(sio > 0.0 && rmax >= 5.0 * sio),
            ratio(rmax, sio),
            verdict(wsx > 0.0 && rmax >= 1.5 * wsx),
            ratio(rmax, wsx)
        );
    }

    let idle = &sc["idle_cost"];
    if idle["summary"].is_object() {
        let s = &idle["summary"];
        let _ = writeln!(o, "### 3. Idle cost{}\n", load(idle));
        let _ = writeln!(o, "{} idle WebSockets through each proxy to 3 fresh nodes (median of {} rounds); RSS growth from before the ramp to the end of the window, over the connections open.\n",
            thousands(f(idle, "params.conns")), f(idle, "params.rounds"));
        let _ = writeln!(
            o,
            "| proxy | connections held | proxy KiB / conn | vs nginx | vs HAProxy | nodes KiB / conn |"
        );
        let _ = writeln!(o, "| --- | ---: | ---: | ---: | ---: | ---: |");
        let n = f(s, "nginx.proxy_bytes_per_conn");
        let h = f(s, "haproxy.proxy_bytes_per_conn");
        for name in ["roompin", "nginx", "haproxy"] {
            let x = &s[name];
            let _ = writeln!(
                o,
                "| {name} | {} | {:.2} | {} | {} | {:.2} |",
                thousands(f(x, "connections_ok")),
                f(x, "proxy_bytes_per_conn") / 1024.0,
                ratio(f(x, "proxy_bytes_per_conn"), n),
                ratio(f(x, "proxy_bytes_per_conn"), h),
                f(x, "nodes_bytes_per_conn") / 1024.0
            );
        }
        let node = f(s, "roompin.nodes_bytes_per_conn") / 1024.0;
        let b = f(s, "roompin.proxy_bytes_per_conn");
        let _ = writeln!(o, "\nTargets: node ≤ 10 KiB/conn: {} ({node:.2} KiB); balancer ≤ HAProxy: {} ({:.2} vs {:.2} KiB, {}); balancer < nginx: {} ({:.2} vs {:.2} KiB, {}).\n",
            verdict(node > 0.0 && node <= 10.0), verdict(b > 0.0 && b <= h), b / 1024.0, h / 1024.0, ratio(b, h),
            verdict(b > 0.0 && b < n), b / 1024.0, n / 1024.0, ratio(b, n));
    }

    let mb = &sc["membership"];
    if mb["summary"].is_object() {
        let s = &mb["summary"];
        let _ = writeln!(o, "### 4. Membership change under load{}\n", load(mb));
        let _ = writeln!(o, "{} meetings × 3 members behind {} balancers, a message every {:.0} s each, every (re)connect through a random balancer; a 4th node added to one balancer's TOML and to the other's {} ms later, then removed the same way. Watched every {} ms. Times are from the edit reaching the second balancer; splits count from the first edit.\n",
            thousands(f(s, "meetings")), f(mb, "params.balancers"), 1.0 / f(mb, "params.msgs_per_sec_per_member").max(1e-9), f(mb, "params.skew_ms"), f(mb, "params.sample_ms"));
        let _ = writeln!(o, "A split is a meeting live on two nodes at once, proven by polls of every node's rooms every 50 ms (bench/src/scenarios/room_sampler.rs). The clients' view is shown too: members of one meeting welcomed on two nodes, until each reads its 4001 close frame. It includes how late a client on a busy core reads that frame, after its room had already closed.\n");
        let _ = writeln!(o, "| change | all on new owner after | meetings live on two nodes | longest | clients on two nodes: meetings | most at once | longest | last seen at | lost | rooms moved | by the ring | ideal (1/N) | moved / ideal |");
        let _ = writeln!(
            o,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for c in s["changes"].as_array().into_iter().flatten() {
            let conv = c["converged_ms"]
                .as_u64()
                .map_or("not within the cap".into(), |v| format!("{v} ms"));
            let split = c["last_split_ms_after_first_edit"]
                .as_u64()
                .map_or("never".into(), |v| format!("{v} ms"));
            let _ = writeln!(
                o,
                "| {} | {conv} | {} | {} ms | {} | {} | {} ms | {split} | {} | {} | {} | {:.0} | {:.2} |",
                c["change"].as_str().unwrap_or("?"),
                if c["node_polls"].is_null() { "not sampled".to_string() } else { format!("{}", f(c, "node_split_meetings")) },
                f(c, "node_longest_split_ms"),
                f(c, "meetings_ever_split"),
                f(c, "max_split_meetings"),
                f(c, "longest_split_ms"),
                f(c, "lost"),
                f(c, "rooms_moved"),
                f(c, "rooms_moved_by_ring"),
                f(c, "ideal_moved"),
                f(c, "moved_over_ideal")
            );
        }
        let _ = writeln!(o, "\nMessages: {} published, {} deliveries expected; **{} lost, {} duplicated**; {} resent after `room_moved`/no echo ({} `room_moved` errors); reconnects: {} after 4001, {} other; {} resumes not recovered.\n",
            thousands(f(s, "published")), thousands(f(s, "deliveries_expected")), f(s, "lost"), f(s, "duplicates"), f(s, "resent"), f(s, "room_moved_errors"), f(s, "reconnects_4001"), f(s, "reconnects_other"), f(s, "not_recovered"));
        let changes: Vec<&Value> = s["changes"].as_array().into_iter().flatten().collect();
        // What each move cost the servers (their one core), beyond the
        // publishing they did before it: convergence is bounded by it.
        let costs: Vec<String> = changes
            .iter()
            .filter(|c| c["move_server_cpu_s"].is_number())
            .map(|c| {
                let role = |k: &str| f(c, &format!("{k}.0")) + f(c, &format!("{k}.1"));
                format!(
                    "{}: {:.2} s, {:.0} µs per moved member (balancers {:.2} s, nodes {:.2} s)",
                    c["change"].as_str().unwrap_or("?"),
                    f(c, "move_server_cpu_s"),
                    f(c, "move_server_cpu_us_per_member"),
                    role("move_cpu_balancers_s"),
                    role("move_cpu_nodes_s"),
                )
            })
            .collect();
        if !costs.is_empty() {
            let _ = writeln!(
                o,
                "The servers' CPU for each move, over their rate in the second before it: {}.\n",
                costs.join("; ")
            );
        }
        let fast = !changes.is_empty()
            && changes
                .iter()
                .all(|c| c["converged_ms"].as_u64().is_some_and(|v| v <= 1000));
        // Judged on the nodes' rooms; a run from before they were polled
        // has only the clients' view, which then counts.
        let whole = changes.iter().all(|c| {
            if c["node_polls"].is_null() {
                f(c, "meetings_ever_split") == 0.0
            } else {
                f(c, "node_split_meetings") == 0.0 && f(c, "node_polls") > 0.0
            }
        });
        let _ = writeln!(o, "Targets: every step converged ≤ 1.0 s: {}; 0 lost: {}; 0 split: {}. CPU over the publishing window: servers {:.0} % of their core{}, clients (this bench) {:.0} % of theirs{}.\n",
            verdict(fast), verdict(f(s, "lost") == 0.0), verdict(whole),
            100.0 * f(s, "server_cpu_share"), if s["server_bound"].as_bool() == Some(true) { " (**saturated**: the run measured the core)" } else { "" },
            100.0 * f(s, "client_cpu_share"), if s["client_bound"].as_bool() == Some(true) { " (**client-bound**)" } else { "" });
    }

    let ring = &sc["ring"];
    if ring["summary"].is_object() {
        let s = &ring["summary"];
        let _ = writeln!(o, "### 5. Ring{}\n", load(ring));
        let mut lk = Vec::new();
        for l in s["lookup_loop"].as_array().into_iter().flatten() {
            lk.push(format!(
                "{} nodes × {} vnodes: {:.0} ns (loop)",
                l["nodes"],
                l["vnodes"],
                f(l, "ns_per_lookup")
            ));
        }
        if let Some(c) = s["lookup_criterion"].as_object() {
            for (k, v) in c {
                if let Some(mean) = v["mean_ns"].as_f64() {
                    lk.push(format!("{k}: {mean:.0} ns (criterion mean)"));
                }
            }
        }
        let _ = writeln!(o, "Lookup: {}.\n", lk.join("; "));
        let _ = writeln!(
            o,
            "Over {} meeting ids:\n",
            thousands(f(ring, "params.keys"))
        );
        let _ = writeln!(o, "| vnodes | nodes | busiest / mean | moved on add (ideal) | only to the new node | moved on remove (ideal) | only from the removed |");
        let _ = writeln!(o, "| ---: | ---: | ---: | ---: | :---: | ---: | :---: |");
        for r in s["balance"].as_array().into_iter().flatten() {
            let _ = writeln!(
                o,
                "| {} | {} | {:.3} | {:.2}% ({:.2}%) | {} | {:.2}% ({:.2}%) | {} |",
                r["vnodes"],
                r["nodes"],
                f(r, "balance_max_over_mean"),
                f(r, "moved_on_add") * 100.0,
                f(r, "ideal_on_add") * 100.0,
                if r["moved_on_add_only_to_new"] == true {
                    "yes"
                } else {
                    "no"
                },
                f(r, "moved_on_remove") * 100.0,
                f(r, "ideal_on_remove") * 100.0,
                if r["moved_on_remove_only_from_removed"] == true {
                    "yes"
                } else {
                    "no"
                }
            );
        }
        o.push('\n');
    }
    let st = &sc["reconnect_storm"];
    if st["summary"].is_object() {
        let s = &st["summary"];
        let _ = writeln!(o, "### 6. Reconnect storm{}\n", load(st));
        let _ = writeln!(o, "{} WebSockets (one per room) through each proxy to 3 fresh nodes; the loadgen drops them all, and {} later all reconnect at once. Storm time: from that instant to the last `welcome` (median of {} rounds).\n",
            thousands(f(st, "params.conns")), st["params"]["gap"].as_str().unwrap_or("?"), f(st, "params.rounds"));
        let _ = writeln!(o, "| proxy | reconnected | failed | storm time ms | each round | p99 reconnect ms | vs nginx | vs HAProxy | proxy CPU s | loadgen busy during the storm | |");
        let _ = writeln!(
            o,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
        );
        let n = f(s, "nginx.storm_ms");
        let h = f(s, "haproxy.storm_ms");
        for name in ["roompin", "nginx", "haproxy"] {
            let x = &s[name];
            let rounds: Vec<String> = x["storm_ms_rounds"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| thousands(v.as_f64().unwrap_or(0.0)))
                .collect();
            let _ = writeln!(
                o,
                "| {name} | {} | {} | {} | {} | {:.0} | {} | {} | {:.2} | {:.0}% | {} |",
                thousands(f(x, "reconnected")),
                f(x, "reconnect_failed"),
                thousands(f(x, "storm_ms")),
                rounds.join(", "),
                f(x, "p99_ms"),
                ratio(f(x, "storm_ms"), n),
                ratio(f(x, "storm_ms"), h),
                f(x, "proxy_cpu_seconds"),
                f(x, "loadgen_busy_during_storm") * 100.0,
                if x["client_bound"] == true {
                    "client-bound"
                } else {
                    ""
                },
            );
        }
        let r = f(s, "roompin.storm_ms");
        let failed = f(s, "roompin.reconnect_failed");
        let bound = s["roompin"]["client_bound"] == true || s["nginx"]["client_bound"] == true;
        if bound {
            client_bound_notes.push(
                "the reconnect-storm verdict (the loadgen was saturated during the storm)".into(),
            );
        }
        let _ = writeln!(
            o,
            "\nTargets: storm time ≤ nginx's: {}{} ({} vs {} ms, {}); 0 failed: {} ({failed}).\n",
            verdict(r > 0.0 && r <= n),
            if bound { ", client-bound" } else { "" },
            thousands(r),
            thousands(n),
            ratio(r, n),
            verdict(failed == 0.0 && f(s, "roompin.reconnected") > 0.0)
        );
    }

    if !client_bound_notes.is_empty() {
        let _ = writeln!(
            o,
            "**Client-bound in this run:** {}.\n",
            client_bound_notes.join("; ")
        );
    } else if !sc.as_object().is_none_or(|m| m.is_empty()) {
        let _ = writeln!(o, "**Client-bound in this run:** no verdict (the loadgen stayed under {:.0}% of its core wherever a verdict was decided).\n", crate::scenarios::CLIENT_BOUND_SHARE * 100.0);
    }
    for (name, v) in sc.as_object().into_iter().flatten() {
        if let Some(e) = v["error"].as_str() {
            let _ = writeln!(
                o,
                "**{name} failed in this run:** `{}`\n",
                e.lines().next().unwrap_or("")
            );
        }
    }
    o
}

/// Replaces the part of `md` between the markers (or appends it).
pub fn update_doc(md: &Path, tables: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(md).unwrap_or_default();
    let block = format!("{BEGIN}\n\n{tables}\n{END}");
    let new = match (text.find(BEGIN), text.find(END)) {
        (Some(a), Some(b)) if a < b => format!("{}{block}{}", &text[..a], &text[b + END.len()..]),
        _ => format!("{text}\n{block}\n"),
    };
    std::fs::write(md, new).with_context(|| format!("cannot write {}", md.display()))
}

const COLORS: [RGBColor; 4] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(120, 120, 120),
];

/// (x, y) points of one system's ladder: per load step (the loadgen's
/// `group` field, e.g. the offered rate), the median over rounds of the
/// delivered rate and of the p99.
fn series(runs: &Value, system: &str, group: &str) -> Vec<(f64, f64)> {
    let mut steps: std::collections::BTreeMap<u64, Vec<&Value>> = Default::default();
    for r in runs.as_array().into_iter().flatten() {
        if r["system"] == system {
            let key = f(&r["result"], group).round() as u64;
            steps.entry(key).or_default().push(&r["result"]);
        }
    }
    let mut pts: Vec<(f64, f64)> = steps
        .values()
        .map(|rs| {
            let x = median_of(rs.iter().map(|r| f(r, "delivered_per_sec")).collect());
            let y = median_of(rs.iter().map(|r| f(r, "p99_us")).collect());
            (x, y.max(1.0) / 1000.0)
        })
        .filter(|(x, _)| *x > 0.0)
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    pts
}

fn median_of(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    match xs.len() {
        0 => 0.0,
        n if n % 2 == 1 => xs[n / 2],
        n => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    x_desc: &str,
    lines: &[(&str, Vec<(f64, f64)>)],
    limit_ms: f64,
) -> anyhow::Result<()> {
    let xmax = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.0))
        .fold(1.0, f64::max)
        * 1.1;
    let ymax = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|q| q.1))
        .fold(limit_ms * 2.0, f64::max)
        * 1.5;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..xmax, (0.5f64..ymax).log_scale())
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("p99 latency, ms (log)")
        .x_label_formatter(&|x| thousands(*x))
        .draw()
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, limit_ms), (xmax, limit_ms)],
            RED.stroke_width(1),
        ))
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?
        .label(format!("p99 limit {limit_ms} ms"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
    for (i, (name, pts)) in lines.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled())))
            .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    Ok(())
}

/// Two panels: the proxy ladder and the fan-out ladder, p99 against load.
pub fn plot(doc: &Value, path: &Path) -> anyhow::Result<()> {
    let sc = &doc["scenarios"];
    let root = SVGBackend::new(path, (1200, 460)).into_drawing_area();
    root.fill(&WHITE)
        .map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    let (left, right) = root.split_horizontally(600);
    let px = &sc["proxy_overhead"]["ladder_runs"];
    let px_lines: Vec<(&str, Vec<(f64, f64)>)> = ["roompin", "nginx", "haproxy", "direct"]
        .iter()
        .map(|s| (*s, series(px, s, "offered_per_sec")))
        .collect();
    panel(
        &left,
        "1. Proxy overhead: round trips (median of rounds)",
        "round trips delivered per second",
        &px_lines,
        10.0,
    )?;
    let fan = &sc["fanout"]["runs"];
    let fan_lines: Vec<(&str, Vec<(f64, f64)>)> = ["roompin", "ws", "socketio"]
        .iter()
        .map(|s| (*s, series(fan, s, "rate")))
        .collect();
    panel(
        &right,
        "2. Fan-out: one room of 1,000",
        "frames delivered per second",
        &fan_lines,
        50.0,
    )?;
    root.present().map_err(|e| anyhow::anyhow!("plot: {e}"))?;
    Ok(())
}

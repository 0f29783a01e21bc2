//! Ring lookup cost: `cargo bench -p roompin-shared --bench ring`.
//! roompin-bench's ring scenario runs this and reads criterion's estimates
//! from target/criterion/ring_lookup/.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use roompin_shared::{Member, Ring};
use std::hint::black_box;

fn members(n: usize) -> Vec<Member> {
    (0..n)
        .map(|i| Member {
            id: format!("node-{i}"),
            addr: format!("127.0.0.1:{}", 9001 + i),
            weight: 1,
        })
        .collect()
}

fn lookup(c: &mut Criterion) {
    let keys: Vec<String> = (0..4096).map(|i| format!("meeting-{i:07}")).collect();
    let mut group = c.benchmark_group("ring_lookup");
    for (nodes, vnodes) in [(3usize, 512u32), (100, 512)] {
        let ring = Ring::new(members(nodes), vnodes);
        let mut i = 0usize;
        group.bench_function(
            BenchmarkId::from_parameter(format!("{nodes}nodes_{vnodes}vnodes")),
            |b| {
                b.iter(|| {
                    i = (i + 1) % keys.len();
                    black_box(ring.owner(black_box(&keys[i])).map(|m| m.weight))
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);

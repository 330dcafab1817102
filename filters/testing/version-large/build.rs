//! Writes `table.bin` into `OUT_DIR`: `TABLE_SIZE` bytes from a fixed-seed
//! PRNG (splitmix64), so the component is several megabytes of data that
//! does not compress, and is the same on every build.

use std::env;
use std::path::PathBuf;

/// The size of the table; `src/lib.rs` checks it against the file it embeds.
const TABLE_SIZE: usize = 6 << 20;
const SEED: u64 = 0x7761_736d_6761_7465; // "wasmgate"

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let mut state = SEED;
    let mut table = Vec::with_capacity(TABLE_SIZE);
    while table.len() < TABLE_SIZE {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        table.extend_from_slice(&z.to_le_bytes());
    }
    table.truncate(TABLE_SIZE);
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("table.bin");
    std::fs::write(&out, &table).unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}

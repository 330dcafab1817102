//! Build 'a' of the swap-test filter (see `../../versioned.rs`).

const VERSION: &str = "a";

include!("../../versioned.rs");

//! Build 'b' of the swap-test filter (see `../../versioned.rs`).

const VERSION: &str = "b";

include!("../../versioned.rs");

//! The rule engine over fixture trees of `/sys` and `/dev`.

//! Sources: the producers that fill rings. Each runs on its own thread and writes into slots the
//! ring lends it.

pub mod synthetic;

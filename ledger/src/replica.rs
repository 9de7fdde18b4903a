//! The PBFT replica core. (Being written.)

//! On-disk IPFS blockstore facade. (Being written.)

//! The replicated application state. (Being written.)

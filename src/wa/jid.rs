//! JIDs.

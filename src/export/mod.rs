//! Exports of streams to the cloud (being built).

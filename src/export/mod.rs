//! Exports of streams to the cloud (being built): [`pipeline`] (one per
//! stream and export), [`destination`] (the client trait), [`gate`]
//! (uploads at once, bandwidth, priority).

pub mod aws;
pub mod destination;
pub mod gate;
pub mod iot_analytics;
pub mod kinesis;
pub mod manager;
pub mod pipeline;

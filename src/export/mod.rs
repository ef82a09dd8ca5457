//! Exports of streams to the cloud. So far: [`cursor`], the durable record
//! of how far each export of a stream has got (its position and the
//! counters `describeMessageStream` reports as `exportStatuses`), which a
//! restart resumes from.

pub mod cursor;

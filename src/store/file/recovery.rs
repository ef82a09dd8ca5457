//! The recovery policy: what start-up does with what it finds in a stream
//! folder, in one place ([`RecoveryMode::remedy`]; compare raft-engine's
//! `RecoveryMode`). [`super::FileLog::open`] and [`super::segment::recover`]
//! ask it at every decision and record each [`Finding`] in the
//! [`super::OpenReport`].
//!
//! | found ([`Damage`])                                      | remedy ([`Remedy`])                              |
//! |---------------------------------------------------------|--------------------------------------------------|
//! | a torn tail of the newest segment (a write cut short)   | `Cut`: the file is cut to its last intact record  |
//! | records failing their checksum elsewhere                | `MarkDamaged`: reads of them fail, the rest reads |
//! | a segment file that cannot be opened or read, or whose header is bad | `Skip`: the file is kept untouched; reads of its range fail; numbering continues after it (at the sequence floor when it was the newest) |
//! | a segment starting before the one before it ends        | `Skip`                                           |
//! | an older segment never sealed (a crash between steps)   | `Seal`: synced and given its sealed index now     |
//! | an index whose segment is gone, a temp file             | `Remove`                                         |
//! | a spare segment whose header says it starts exactly where the newest segment ends (weir stopped before its name was made durable) | `Adopt`: the newest is sealed, the spare renamed to its segment name and recovered as the newest |
//! | any other spare segment                                  | `Remove`                                         |
//! | a sequence floor that cannot be read                    | `Skip`: the next floor write replaces it; a lost newest segment is then assumed to have held [`super::format::FLOOR_LEASE`] numbers |
//! | a file that is not weir's                               | `Leave`                                          |
//!
//! That table is [`RecoveryMode::TolerateAnyCorruption`], the mode weir runs
//! with: a stream keeps serving whatever is intact. Under
//! [`RecoveryMode::TolerateTailCorruption`] anything but a torn tail, an
//! unsealed older segment or a leftover (orphan index, temp file, foreign
//! file) is refused instead: the stream does not load and its folder is left
//! as it is. A torn tail is normal after a crash in either mode.
//!
//! After recovery the newest segment's bytes and the folder's entries are
//! synced, so what the previous process had written but not synced is
//! durable before anything new is promised (the power-cut bound of the sync
//! interval holds across restarts).

/// What recovery found wrong (or left over) in a stream folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    TornTail {
        bytes: u64,
    },
    /// Records `from..to` fail their checksum.
    DamagedRecords {
        from: i64,
        to: i64,
    },
    UnreadableSegment {
        reason: String,
    },
    OverlappingSegment {
        previous_end: i64,
    },
    UnsealedSegment,
    /// A spare segment that follows the newest one exactly.
    FollowingSpare,
    UnusedSpare,
    OrphanIndex,
    TempFile,
    UnreadableFloor {
        reason: String,
    },
    ForeignFile,
}

/// What recovery does about a [`Damage`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Remedy {
    Cut,
    MarkDamaged,
    Skip,
    Seal,
    Adopt,
    Remove,
    Leave,
    /// The stream is not loaded.
    Refuse,
}

/// How much damage a stream may have and still load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Only what a crash leaves (torn tail, unsealed older segment,
    /// leftovers) is repaired; anything else refuses the stream.
    TolerateTailCorruption,
    /// Everything intact is served; damage is marked or skipped.
    #[default]
    TolerateAnyCorruption,
}

impl RecoveryMode {
    pub fn remedy(self, damage: &Damage) -> Remedy {
        let tolerant = self == RecoveryMode::TolerateAnyCorruption;
        match damage {
            Damage::TornTail { .. } => Remedy::Cut,
            Damage::UnsealedSegment => Remedy::Seal,
            Damage::FollowingSpare => Remedy::Adopt,
            Damage::OrphanIndex | Damage::TempFile | Damage::UnusedSpare => Remedy::Remove,
            Damage::ForeignFile => Remedy::Leave,
            Damage::DamagedRecords { .. } if tolerant => Remedy::MarkDamaged,
            Damage::UnreadableSegment { .. }
            | Damage::OverlappingSegment { .. }
            | Damage::UnreadableFloor { .. }
                if tolerant =>
            {
                Remedy::Skip
            }
            _ => Remedy::Refuse,
        }
    }
}

/// One thing recovery found, in which file, and what it did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub file: String,
    pub damage: Damage,
    pub remedy: Remedy,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {:?} ({:?})", self.file, self.damage, self.remedy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tolerant_mode_serves_around_damage() {
        let damaged = Damage::DamagedRecords { from: 1, to: 2 };
        let unreadable = Damage::UnreadableSegment {
            reason: "EIO".into(),
        };
        let any = RecoveryMode::TolerateAnyCorruption;
        let tail = RecoveryMode::TolerateTailCorruption;
        assert_eq!(RecoveryMode::default(), any);
        assert_eq!(any.remedy(&damaged), Remedy::MarkDamaged);
        assert_eq!(any.remedy(&unreadable), Remedy::Skip);
        assert_eq!(tail.remedy(&damaged), Remedy::Refuse);
        assert_eq!(tail.remedy(&unreadable), Remedy::Refuse);
        for mode in [any, tail] {
            assert_eq!(mode.remedy(&Damage::TornTail { bytes: 3 }), Remedy::Cut);
            assert_eq!(mode.remedy(&Damage::UnsealedSegment), Remedy::Seal);
            assert_eq!(mode.remedy(&Damage::TempFile), Remedy::Remove);
        }
    }
}

//! The routing table of seed 3.3 as data: (message size class x priority) ->
//! ordered transport list.
//!
//! | Size            | Priority              | Order                                          |
//! |-----------------|-----------------------|------------------------------------------------|
//! | < 256 B         | Critical              | LoRa > Bluetooth > Wi-Fi Direct > Wired > Internet |
//! | < 256 B         | High, Normal, Low     | Bluetooth > Wi-Fi Direct > Wired > Internet > LoRa |
//! | 256 B - 64 KiB  | Critical..Low         | Wi-Fi Direct > Bluetooth > Wired > Internet    |
//! | 64 KiB - 1 MiB  | Critical..Low         | Wi-Fi Direct > Wired > Internet                |
//! | > 1 MiB         | Critical..Low         | Wired > Wi-Fi Direct > Internet                |
//! | any             | Bulk                  | Internet > Wired > Wi-Fi Direct                |
//!
//! The seed only names `Critical`, `Normal` and `Bulk`. `High` and `Low` follow
//! the `Normal` rows: only `Critical` (small messages) and `Bulk` have rows of
//! their own. Boundaries: a message of exactly 256 bytes is in the
//! 256 B - 64 KiB class, exactly 64 KiB in the 64 KiB - 1 MiB class and exactly
//! 1 MiB in that class too; above 1 MiB is the last class.
//!
//! [`route`] uses only the row: a transport absent from it is not offered
//! (LoRa never for 256 bytes or more, Bluetooth nothing over 64 KiB, nothing
//! Bulk over LoRa or Bluetooth). [`route_with_caps`], which knows each
//! transport's `max_message_size`, skips a transport too small for the
//! message and then adds the *fallback*: a reachable transport outside the
//! row whose own limit admits the message comes after every transport of the
//! row (Wired, Wi-Fi Direct, Internet, Bluetooth, LoRa in that order), never
//! for Bulk over LoRa or Bluetooth. So a peer reachable only over LoRa still
//! gets a 1 KB control message that fits the LoRa transport's fragments,
//! while any faster link that reaches it is preferred.

use ecomesh_types::{Priority, TransportCapabilities, TransportType};

use TransportType::{Bluetooth, Internet, Lora, WifiDirect, Wired};

/// Upper bound (exclusive) of the small class.
pub const SMALL_MAX: usize = 256;
/// Upper bound (exclusive) of the medium class: 64 KiB.
pub const MEDIUM_MAX: usize = 64 * 1024;
/// Upper bound (inclusive) of the large class: 1 MiB.
pub const LARGE_MAX: usize = 1024 * 1024;

/// The seed's message size classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SizeClass {
    /// Under 256 bytes.
    Small,
    /// 256 bytes up to (excluding) 64 KiB.
    Medium,
    /// 64 KiB up to and including 1 MiB.
    Large,
    /// Over 1 MiB.
    Huge,
}

impl SizeClass {
    /// The class of a message of `size` encoded bytes.
    pub fn of(size: usize) -> Self {
        if size < SMALL_MAX {
            SizeClass::Small
        } else if size < MEDIUM_MAX {
            SizeClass::Medium
        } else if size <= LARGE_MAX {
            SizeClass::Large
        } else {
            SizeClass::Huge
        }
    }
}

/// The seed's full preference order for a size class and priority (see the module table).
pub fn preference(class: SizeClass, priority: Priority) -> &'static [TransportType] {
    match (class, priority) {
        (_, Priority::Bulk) => &[Internet, Wired, WifiDirect],
        (SizeClass::Small, Priority::Critical) => &[Lora, Bluetooth, WifiDirect, Wired, Internet],
        (SizeClass::Small, _) => &[Bluetooth, WifiDirect, Wired, Internet, Lora],
        (SizeClass::Medium, _) => &[WifiDirect, Bluetooth, Wired, Internet],
        (SizeClass::Large, _) => &[WifiDirect, Wired, Internet],
        (SizeClass::Huge, _) => &[Wired, WifiDirect, Internet],
    }
}

/// The transports to try, in order, for a message of `size` bytes at
/// `priority` when `available` are the transports that reach the peer.
/// Transports not in the row, or not available, are left out.
pub fn route(size: usize, priority: Priority, available: &[TransportType]) -> Vec<TransportType> {
    preference(SizeClass::of(size), priority)
        .iter()
        .copied()
        .filter(|t| available.contains(t))
        .collect()
}

/// Order in which transports outside a row are tried as a fallback.
const FALLBACK: [TransportType; 5] = [Wired, WifiDirect, Internet, Bluetooth, Lora];

/// Like [`route`], with each available transport's capabilities: a transport
/// whose `max_message_size` is below `size` is skipped, and reachable
/// transports outside the row that can carry the message follow the row as
/// a fallback (see the module docs).
pub fn route_with_caps(
    size: usize,
    priority: Priority,
    available: &[(TransportType, TransportCapabilities)],
) -> Vec<TransportType> {
    let fits = |t: &TransportType| {
        available
            .iter()
            .any(|(a, caps)| a == t && caps.max_message_size >= size)
    };
    let mut out: Vec<TransportType> = preference(SizeClass::of(size), priority)
        .iter()
        .copied()
        .filter(fits)
        .collect();
    for t in FALLBACK {
        let never = priority == Priority::Bulk && matches!(t, Lora | Bluetooth);
        if !never && !out.contains(&t) && fits(&t) {
            out.push(t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [TransportType; 5] = TransportType::ALL;

    #[test]
    fn row_small_critical() {
        assert_eq!(
            route(10, Priority::Critical, &ALL),
            vec![Lora, Bluetooth, WifiDirect, Wired, Internet]
        );
        assert_eq!(
            route(255, Priority::Critical, &ALL),
            vec![Lora, Bluetooth, WifiDirect, Wired, Internet]
        );
    }

    #[test]
    fn row_small_normal_and_its_high_low_followers() {
        for p in [Priority::High, Priority::Normal, Priority::Low] {
            assert_eq!(
                route(0, p, &ALL),
                vec![Bluetooth, WifiDirect, Wired, Internet, Lora],
                "{p}"
            );
        }
    }

    #[test]
    fn row_medium_any() {
        for p in [
            Priority::Critical,
            Priority::High,
            Priority::Normal,
            Priority::Low,
        ] {
            for size in [256, 1000, MEDIUM_MAX - 1] {
                assert_eq!(
                    route(size, p, &ALL),
                    vec![WifiDirect, Bluetooth, Wired, Internet]
                );
            }
        }
    }

    #[test]
    fn row_large_any() {
        for p in [Priority::Critical, Priority::Normal, Priority::Low] {
            for size in [MEDIUM_MAX, 500_000, LARGE_MAX] {
                assert_eq!(route(size, p, &ALL), vec![WifiDirect, Wired, Internet]);
            }
        }
    }

    #[test]
    fn row_huge_any() {
        for p in [Priority::Critical, Priority::High, Priority::Normal] {
            assert_eq!(
                route(LARGE_MAX + 1, p, &ALL),
                vec![Wired, WifiDirect, Internet]
            );
        }
    }

    #[test]
    fn row_bulk_any_size() {
        for size in [0, 255, 256, MEDIUM_MAX, LARGE_MAX + 1] {
            assert_eq!(
                route(size, Priority::Bulk, &ALL),
                vec![Internet, Wired, WifiDirect]
            );
        }
    }

    #[test]
    fn unavailable_transports_are_left_out_in_order() {
        assert_eq!(
            route(10, Priority::Critical, &[Internet, Lora]),
            vec![Lora, Internet]
        );
        assert_eq!(route(300, Priority::Normal, &[Lora]), Vec::new());
        assert!(route(10, Priority::Bulk, &[Bluetooth, Lora]).is_empty());
    }

    #[test]
    fn capabilities_too_small_are_skipped() {
        let caps: Vec<_> = ALL
            .iter()
            .map(|t| (*t, TransportCapabilities::seed_defaults(*t)))
            .collect();
        // 240 bytes: LoRa (233) cannot carry it even though it heads the row.
        assert_eq!(
            route_with_caps(240, Priority::Critical, &caps),
            vec![Bluetooth, WifiDirect, Wired, Internet]
        );
        assert_eq!(
            route_with_caps(200, Priority::Critical, &caps)[0],
            Lora,
            "fits in one LoRa payload"
        );
        // Exactly 64 KiB is in the large class; Bluetooth is not in that row,
        // but its limit admits it, so it comes last as a fallback.
        assert_eq!(
            route_with_caps(MEDIUM_MAX, Priority::Normal, &caps),
            vec![WifiDirect, Wired, Internet, Bluetooth]
        );
    }

    #[test]
    fn a_transport_outside_the_row_is_a_fallback_when_it_can_carry_the_message() {
        let mut lora = TransportCapabilities::seed_defaults(Lora);
        lora.max_message_size = 1536;
        let wired = TransportCapabilities::seed_defaults(Wired);
        // 1 KB, Normal: LoRa is not in the medium row, but it is the only way.
        assert_eq!(
            route_with_caps(1000, Priority::Normal, &[(Lora, lora.clone())]),
            vec![Lora]
        );
        // Any transport of the row goes first.
        assert_eq!(
            route_with_caps(
                1000,
                Priority::Normal,
                &[(Lora, lora.clone()), (Wired, wired)]
            ),
            vec![Wired, Lora]
        );
        // Too big for the fragments, or Bulk: never over LoRa.
        assert!(route_with_caps(2000, Priority::Normal, &[(Lora, lora.clone())]).is_empty());
        assert!(route_with_caps(100, Priority::Bulk, &[(Lora, lora)]).is_empty());
    }

    proptest::proptest! {
        #[test]
        fn prop_route_is_the_row_filtered_in_order(
            size in 0_usize..3_000_000,
            p in 0_usize..5,
            mask in 0_u8..32,
        ) {
            let priority = Priority::ALL[p];
            let available: Vec<TransportType> = ALL
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, t)| *t)
                .collect();
            let got = route(size, priority, &available);
            proptest::prop_assert!(got.iter().all(|t| available.contains(t)));
            let mut dedup = got.clone();
            dedup.sort();
            dedup.dedup();
            proptest::prop_assert_eq!(dedup.len(), got.len());
            // Internet and Wired are in every row, so they are always offered when available.
            for t in [Internet, Wired] {
                proptest::prop_assert_eq!(got.contains(&t), available.contains(&t));
            }
            if priority == Priority::Bulk && available.contains(&Internet) {
                proptest::prop_assert_eq!(got[0], Internet);
            }
            if priority == Priority::Critical && size < SMALL_MAX && available.contains(&Lora) {
                proptest::prop_assert_eq!(got[0], Lora);
            }
            if size >= SMALL_MAX {
                proptest::prop_assert!(!got.contains(&Lora));
            }
            if size >= MEDIUM_MAX || priority == Priority::Bulk {
                proptest::prop_assert!(!got.contains(&Bluetooth));
            }
        }
    }
}

//! LoRa airtime (the Semtech formula of the SX127x/SX126x datasheets, AN1200.13) and the
//! regional duty-cycle budgets.

/// Meshtastic's over-the-air header in front of every packet (dest, sender, id, flags,
/// channel hash, next hop, relay node).
pub const MESHTASTIC_HEADER_LEN: usize = 16;
/// Largest LoRa PHY payload.
pub const MAX_PHY_PAYLOAD: usize = 255;
/// Largest application payload in one Meshtastic packet (`Data.payload`).
pub const MAX_APP_PAYLOAD: usize = 233;

/// LoRa modem settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraParams {
    /// Spreading factor, 6..=12.
    pub spreading_factor: u8,
    /// Bandwidth in Hz.
    pub bandwidth_hz: u32,
    /// Coding rate denominator minus 4: 1 for 4/5 ... 4 for 4/8.
    pub coding_rate: u8,
    /// Programmed preamble length in symbols.
    pub preamble: u16,
    /// Explicit header (Meshtastic: yes).
    pub explicit_header: bool,
    /// Payload CRC (Meshtastic: yes).
    pub crc: bool,
    /// Low data rate optimisation; `None` = automatic (on when a symbol lasts over 16 ms,
    /// as the Semtech drivers and Meshtastic do).
    pub low_data_rate: Option<bool>,
}

impl LoraParams {
    /// Meshtastic's default `LongFast` preset: SF11, 250 kHz, CR 4/5, preamble 16.
    pub const LONG_FAST: LoraParams = LoraParams {
        spreading_factor: 11,
        bandwidth_hz: 250_000,
        coding_rate: 1,
        preamble: 16,
        explicit_header: true,
        crc: true,
        low_data_rate: None,
    };
    /// Meshtastic's `ShortTurbo` preset: SF7, 500 kHz, CR 4/5, preamble 16.
    pub const SHORT_TURBO: LoraParams = LoraParams {
        spreading_factor: 7,
        bandwidth_hz: 500_000,
        ..LoraParams::LONG_FAST
    };
    /// Meshtastic's `LongSlow` preset: SF12, 125 kHz, CR 4/8, preamble 16.
    pub const LONG_SLOW: LoraParams = LoraParams {
        spreading_factor: 12,
        bandwidth_hz: 125_000,
        coding_rate: 4,
        ..LoraParams::LONG_FAST
    };

    /// Symbol duration in microseconds (2^SF / BW).
    pub fn symbol_us(&self) -> f64 {
        f64::from(1u32 << self.spreading_factor.min(12)) * 1e6 / f64::from(self.bandwidth_hz.max(1))
    }

    fn ldro(&self) -> bool {
        self.low_data_rate
            .unwrap_or_else(|| self.symbol_us() > 16_000.0)
    }

    /// Time on air of a PHY payload of `phy_len` bytes, in microseconds.
    pub fn airtime_us(&self, phy_len: usize) -> u64 {
        let sf = f64::from(self.spreading_factor.clamp(6, 12));
        let t_sym = self.symbol_us();
        let t_preamble = (f64::from(self.preamble) + 4.25) * t_sym;
        let ih = if self.explicit_header { 0.0 } else { 1.0 };
        let crc = if self.crc { 1.0 } else { 0.0 };
        let de = if self.ldro() { 1.0 } else { 0.0 };
        let cr = f64::from(self.coding_rate.clamp(1, 4));
        let num = 8.0 * phy_len as f64 - 4.0 * sf + 28.0 + 16.0 * crc - 20.0 * ih;
        let den = 4.0 * (sf - 2.0 * de);
        let n_payload = 8.0 + ((num / den).ceil() * (cr + 4.0)).max(0.0);
        let total = t_preamble + n_payload * t_sym;
        total.ceil() as u64
    }

    /// Time on air of one Meshtastic packet carrying `app_len` application bytes, in ms
    /// (rounded up): the 16-byte header plus the `Data` protobuf (port 256, payload).
    pub fn packet_airtime_ms(&self, app_len: usize) -> u64 {
        self.airtime_us(phy_len_of(app_len)).div_ceil(1000)
    }

    /// Airtime of the largest packet, ms.
    pub fn max_packet_airtime_ms(&self) -> u64 {
        self.packet_airtime_ms(MAX_APP_PAYLOAD)
    }
}

/// PHY bytes of a Meshtastic packet with `app_len` application bytes: the header,
/// `Data.portnum = 256` (3 bytes) and `Data.payload` (tag, length, bytes).
pub fn phy_len_of(app_len: usize) -> usize {
    let len_varint = if app_len < 128 { 1 } else { 2 };
    MESHTASTIC_HEADER_LEN + 3 + 1 + len_varint + app_len
}

/// A regulatory region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Region {
    /// Europe 863-870 MHz (ETSI EN 300 220): 10% in 869.4-869.65 MHz, 1% elsewhere.
    Eu868,
    /// US 902-928 MHz: no duty-cycle limit (FCC 15.247 dwell rules are met by the radio).
    Us915,
}

/// A duty-cycle budget: at most `permille`/1000 of any `window_ms` on air.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DutyBudget {
    /// Allowed fraction in thousandths (1000 = unlimited).
    pub permille: u32,
    /// The sliding window, ms.
    pub window_ms: u64,
}

impl DutyBudget {
    /// The legal budget of `region` at `frequency_hz`, over one hour.
    pub fn for_region(region: Region, frequency_hz: u64) -> DutyBudget {
        let permille = match region {
            Region::Eu868 if (869_400_000..=869_650_000).contains(&frequency_hz) => 100,
            Region::Eu868 => 10,
            Region::Us915 => 1000,
        };
        DutyBudget {
            permille,
            window_ms: 3_600_000,
        }
    }

    /// Airtime allowed per window, ms.
    pub fn allowance_ms(&self) -> u64 {
        self.window_ms
            .saturating_mul(u64::from(self.permille.min(1000)))
            / 1000
    }
}

/// Meshtastic's EU868 default frequency for LongFast (slot 1 of 869.4-869.65 MHz).
pub const EU868_LONG_FAST_HZ: u64 = 869_525_000;

#[cfg(test)]
mod tests {
    use super::*;

    const SF7_125: LoraParams = LoraParams {
        spreading_factor: 7,
        bandwidth_hz: 125_000,
        coding_rate: 1,
        preamble: 8,
        explicit_header: true,
        crc: true,
        low_data_rate: None,
    };

    #[test]
    fn semtech_reference_values() {
        // Semtech LoRa calculator: SF7/125 kHz/CR4-5, preamble 8, 10 bytes: 41.216 ms.
        assert_eq!(SF7_125.airtime_us(10), 41_216);
        // SF12/125 kHz/CR4-5, preamble 8, LDRO on, 51 bytes: 2465.792 ms (the LoRaWAN
        // EU868 DR0 maximum frame, 2465.8 ms in the Semtech and TTN calculators).
        let sf12 = LoraParams {
            spreading_factor: 12,
            ..SF7_125
        };
        assert_eq!(sf12.airtime_us(51), 2_465_792);
        // SF9/125 kHz, 20 bytes: symbol 4.096 ms; (160-36+44)/36 -> 5 -> 25+8 = 33
        // symbols + 12.25 preamble = 185.344 ms.
        let sf9 = LoraParams {
            spreading_factor: 9,
            ..SF7_125
        };
        assert_eq!(sf9.airtime_us(20), 185_344);
    }

    #[test]
    fn long_fast_full_packet() {
        // SF11/250 kHz: symbol 8.192 ms, no LDRO. 255 bytes: (2040-44+44)/44 -> 47 ->
        // 235+8 = 243 symbols; preamble (16+4.25) symbols: 2156.544 ms.
        assert_eq!(LoraParams::LONG_FAST.airtime_us(255), 2_156_544);
        assert_eq!(phy_len_of(MAX_APP_PAYLOAD), MAX_PHY_PAYLOAD);
        assert_eq!(LoraParams::LONG_FAST.max_packet_airtime_ms(), 2157);
        // LongSlow turns on LDRO (32.768 ms symbols).
        assert!(LoraParams::LONG_SLOW.ldro());
        assert!(!LoraParams::LONG_FAST.ldro());
    }

    #[test]
    fn eu868_budgets() {
        assert_eq!(
            DutyBudget::for_region(Region::Eu868, EU868_LONG_FAST_HZ).allowance_ms(),
            360_000
        );
        assert_eq!(
            DutyBudget::for_region(Region::Eu868, 868_100_000).allowance_ms(),
            36_000
        );
        assert_eq!(
            DutyBudget::for_region(Region::Us915, 915_000_000).permille,
            1000
        );
    }
}

//! Retention: which recovery points a machine's policy lets go.

use lifeboat_api::RetentionTier;

/// Which of `points` (id, created ms, rank), oldest first, a retention of `tiers` deletes
/// at `now`. In each tier one point stays per `every_secs` slot: the one of highest rank
/// (2: part of a consistency-group point, 1: app-consistent, 0: crash-consistent), the
/// oldest among equals; past the last tier nothing stays; the newest point always stays.
pub fn thin(points: &[(String, u64, u8)], now: u64, tiers: &[RetentionTier]) -> Vec<String> {
    use std::collections::BTreeMap;
    let mut delete = Vec::new();
    // (tier, slot) → the survivor so far (rank, created, id).
    let mut slots: BTreeMap<(usize, u64), (u8, u64, String)> = BTreeMap::new();
    let n = points.len();
    for (id, created, rank) in points.iter().take(n.saturating_sub(1)) {
        let age = now.saturating_sub(*created) / 1000;
        let Some((tier, t)) = tiers.iter().enumerate().find(|(_, t)| age < t.for_secs) else {
            delete.push(id.clone());
            continue;
        };
        if t.every_secs == 0 {
            continue;
        }
        let key = (tier, created / (t.every_secs * 1000));
        match slots.get(&key) {
            None => {
                slots.insert(key, (*rank, *created, id.clone()));
            }
            // Oldest first: a later point replaces the survivor only with a higher rank.
            Some((r, _, kept)) if *rank > *r => {
                delete.push(kept.clone());
                slots.insert(key, (*rank, *created, id.clone()));
            }
            Some(_) => delete.push(id.clone()),
        }
    }
    delete
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(ages_s: &[u64], now: u64) -> Vec<(String, u64, u8)> {
        ages_s.iter().map(|a| (format!("p{a}"), now - a * 1000, 0)).collect()
    }

    #[test]
    fn thinning_keeps_one_point_per_slot_per_tier() {
        let now = 1_000_000 * 1000;
        let tiers = [
            RetentionTier { every_secs: 0, for_secs: 100 },
            RetentionTier { every_secs: 1000, for_secs: 10_000 },
        ];
        // Oldest first: 20000 s (past every tier), two in one 1000-s slot, one in another,
        // and young ones kept whole.
        let points = pts(&[20_000, 5_500, 5_200, 3_500, 50, 10, 1], now);
        let gone = thin(&points, now, &tiers);
        assert_eq!(gone, vec!["p20000".to_string(), "p5200".to_string()]);
        // The newest point stays even past every tier.
        assert!(thin(&pts(&[50_000], now), now, &tiers).is_empty());
        assert!(thin(&[], now, &tiers).is_empty());
        // In a slot, a group point outranks an app point, which outranks a crash point,
        // whatever their order.
        let mut ranked = pts(&[5_900, 5_700, 5_500, 5_300, 10], now);
        ranked[1].2 = 1; // app
        ranked[2].2 = 2; // group
        ranked[3].2 = 1;
        let mut gone = thin(&ranked, now, &tiers);
        gone.sort();
        assert_eq!(gone, vec!["p5300".to_string(), "p5700".into(), "p5900".into()]);
    }
}

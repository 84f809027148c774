//! Where sessions go when several gateways share a store: the decisions, without I/O. The
//! keeper (`ownership`) feeds them what every gateway announced in the store (when it started,
//! how many sessions it serves) and acts on the answers.
//!
//! Three rules:
//! - **Failover spreads**: sessions nobody serves (their gateway died, or let them go) are
//!   taken by gateways below their fair share, each up to it, so one death does not pile every
//!   orphan on one survivor.
//! - **A rolling update moves each session once**: a gateway that joined within the settle
//!   period and is the youngest takes everything that frees up, up to its limit. Updated pods
//!   start before old ones stop (a surge), so each old pod's sessions go straight to a new pod
//!   rather than to an old pod that is next to stop.
//! - **Rebalancing waits for calm**: only once the set of gateways has not changed for the
//!   settle period, only the most loaded gateway lets sessions go, only while another is below
//!   its share, and at a bounded pace. During an update the membership keeps changing, so
//!   nothing is rebalanced until it is over.
//!
//! Sessions nobody took for two whole scans are taken by any gateway with room, whatever the
//! shares say, so a session is never left waiting on a gateway that cannot take it.

use std::time::Duration;

use crate::store::Member;

/// What one gateway sees of the group at a scan.
pub(crate) struct View<'a> {
    /// Its own owner id.
    pub me: &'a str,
    /// Every live announcement (its own included, possibly stale).
    pub members: &'a [Member],
    /// Sessions it serves now (fresher than its announcement).
    pub serving: usize,
    /// Unix ms now.
    pub now_ms: u64,
}

impl View<'_> {
    fn others(&self) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |m| m.owner != self.me)
    }

    fn count(&self) -> usize {
        self.others().count() + 1
    }

    /// Fair share with `extra` sessions to place besides those served: the ceiling of the
    /// mean.
    fn share(&self, extra: usize) -> usize {
        let total = self
            .others()
            .map(|m| usize::try_from(m.serving).unwrap_or(usize::MAX))
            .fold(self.serving.saturating_add(extra), usize::saturating_add);
        total.div_ceil(self.count())
    }

    /// The youngest gateway, newest start first (ties: the larger owner id).
    fn youngest(&self) -> Option<&Member> {
        self.members
            .iter()
            .max_by(|a, b| (a.started_ms, &a.owner).cmp(&(b.started_ms, &b.owner)))
    }
}

/// How many of `unserved` freshly orphaned sessions this gateway takes in one scan, with `room`
/// places left under its limit. (Sessions that already waited a scan are taken up to `room`
/// whatever this says.)
pub(crate) fn intake(view: &View<'_>, room: usize, unserved: usize, settle: Duration) -> usize {
    let room = room.min(unserved);
    if view.count() <= 1 {
        return room;
    }
    if let Some(youngest) = view.youngest() {
        let age = view.now_ms.saturating_sub(youngest.started_ms);
        if youngest.owner == view.me && u128::from(age) < settle.as_millis() {
            return room;
        }
    }
    room.min(view.share(unserved).saturating_sub(view.serving))
}

/// How many sessions this gateway hands to others now, at most `pace`: only the most loaded
/// gateway (ties: the smaller owner id) gives, only the excess over the fair share, and only
/// while some other gateway is below it. The caller checks the membership is settled.
pub(crate) fn surplus(view: &View<'_>, pace: usize) -> usize {
    if view.count() <= 1 {
        return 0;
    }
    let share = view.share(0);
    if view.serving <= share {
        return 0;
    }
    let mut lightest = usize::MAX;
    for m in view.others() {
        let serving = usize::try_from(m.serving).unwrap_or(usize::MAX);
        // Someone serves more, or as much with a smaller id: that one gives first.
        if serving > view.serving || (serving == view.serving && m.owner.as_str() < view.me) {
            return 0;
        }
        lightest = lightest.min(serving);
    }
    if lightest >= share {
        return 0;
    }
    (view.serving - share).min(share - lightest).min(pace)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_secs(60);
    const NOW: u64 = 1_000_000;

    fn member(owner: &str, started_ms: u64, serving: u64) -> Member {
        Member {
            owner: owner.into(),
            started_ms,
            serving,
        }
    }

    fn view<'a>(me: &'a str, members: &'a [Member], serving: usize) -> View<'a> {
        View {
            me,
            members,
            serving,
            now_ms: NOW,
        }
    }

    #[test]
    fn alone_takes_what_fits() {
        let members = [member("a", 0, 5)];
        assert_eq!(intake(&view("a", &members, 5), 10, 30, SETTLE), 10);
        assert_eq!(intake(&view("a", &[], 5), 10, 30, SETTLE), 10);
        assert_eq!(surplus(&view("a", &members, 5), 100), 0);
    }

    #[test]
    fn failover_spreads_up_to_the_share() {
        // c died with 30: a and b, settled long ago, split them.
        let members = [member("a", 0, 30), member("b", 10, 30)];
        assert_eq!(intake(&view("a", &members, 30), 1000, 30, SETTLE), 15);
        assert_eq!(intake(&view("b", &members, 30), 1000, 30, SETTLE), 15);
        // Bounded by room.
        assert_eq!(intake(&view("b", &members, 30), 4, 30, SETTLE), 4);
        // Over the share: nothing.
        let members = [member("a", 0, 50), member("b", 10, 10)];
        assert_eq!(intake(&view("a", &members, 50), 1000, 10, SETTLE), 0);
        assert_eq!(intake(&view("b", &members, 10), 1000, 10, SETTLE), 10);
    }

    #[test]
    fn a_newcomer_takes_everything_during_an_update() {
        // An old pod stopped and freed 30; the new one (started 5 s ago) takes them all, the
        // old one next to stop takes none.
        let members = [member("old", 0, 30), member("new", NOW - 5_000, 0)];
        assert_eq!(intake(&view("new", &members, 0), 1000, 30, SETTLE), 30);
        assert_eq!(intake(&view("old", &members, 30), 1000, 30, SETTLE), 0);
        // Once settled, the youngest is one gateway among others.
        let members = [member("old", 0, 30), member("new", NOW - 61_000, 0)];
        assert_eq!(intake(&view("new", &members, 0), 1000, 30, SETTLE), 30);
    }

    #[test]
    fn only_the_heaviest_gives_and_only_its_excess() {
        let members = [member("a", 0, 60), member("b", 0, 0), member("c", 0, 30)];
        // share 30: a gives 30, paced.
        assert_eq!(surplus(&view("a", &members, 60), 100), 30);
        assert_eq!(surplus(&view("a", &members, 60), 8), 8);
        assert_eq!(surplus(&view("b", &members, 0), 100), 0);
        assert_eq!(surplus(&view("c", &members, 30), 100), 0);
        // Two equally heavy: the smaller id gives.
        let members = [member("a", 0, 40), member("b", 0, 40), member("c", 0, 10)];
        assert_eq!(surplus(&view("a", &members, 40), 100), 10);
        assert_eq!(surplus(&view("b", &members, 40), 100), 0);
    }

    #[test]
    fn balanced_enough_moves_nothing() {
        // 31/30/30: the share is 31; nobody is over it.
        let members = [member("a", 0, 31), member("b", 0, 30), member("c", 0, 30)];
        assert_eq!(surplus(&view("a", &members, 31), 100), 0);
        // 32/30/29: share 31, a gives 1.
        let members = [member("a", 0, 32), member("b", 0, 30), member("c", 0, 29)];
        assert_eq!(surplus(&view("a", &members, 32), 100), 1);
        // Nobody below the share: nothing to give even when over it (after rounding).
        let members = [member("a", 0, 2), member("b", 0, 1)];
        assert_eq!(surplus(&view("a", &members, 2), 100), 0);
    }
}

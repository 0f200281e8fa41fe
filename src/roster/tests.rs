//! The roster in virtual time: each state reached the way the issue says, with no sleeping.

use super::*;

fn t(s: f64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_764_640_000_000 + (s * 1000.0) as i64).unwrap()
}

fn obs(kind: Seen, pid: u32, started: f64, at: f64, state: State) -> Observation {
    Observation {
        kind,
        tool: "dd_log2source".into(),
        instance: "r1".into(),
        host: "h1".into(),
        pid,
        started: t(started),
        alive_interval: 10.0,
        state,
        time: t(at),
        version: "0.1.0".into(),
        failure: None,
        role: None,
    }
}

fn state(r: &Roster, at: f64) -> RosterState {
    r.rows(t(at))[0].state
}

#[test]
fn alive_keeps_it_running_and_silence_goes_silent_then_dead_once_asked() {
    let mut r = Roster::new(300.0);
    assert_eq!(
        r.observe(&obs(Seen::Start, 7, 0.0, 0.0, State::Starting)),
        Change::New
    );
    r.observe(&obs(Seen::Status, 7, 0.0, 0.1, State::Running));
    r.observe(&obs(Seen::Alive, 7, 0.0, 10.0, State::Running));
    assert_eq!(state(&r, 29.9), RosterState::Running);
    assert_eq!(state(&r, 30.1), RosterState::Silent);
    assert_eq!(
        r.to_ask(t(30.1)),
        vec![("dd_log2source".into(), "r1".into())]
    );
    // 5x and never asked: still only silent (it is asked directly once before it goes further)
    assert_eq!(state(&r, 61.0), RosterState::Silent);
    r.asked("dd_log2source", "r1", t(31.0));
    assert!(r.to_ask(t(32.0)).is_empty());
    assert_eq!(state(&r, 59.9), RosterState::Silent);
    let row = &r.rows(t(61.0))[0];
    assert_eq!(row.state, RosterState::Dead);
    assert_eq!(
        row.evidence,
        "no word for 51s (5x its alive interval of 10s); asked at 01:47:11Z, no answer"
    );
}

#[test]
fn a_stopped_process_that_answers_or_speaks_again_is_running() {
    let mut r = Roster::new(300.0);
    r.observe(&obs(Seen::Alive, 7, 0.0, 0.0, State::Running));
    r.asked("dd_log2source", "r1", t(25.0));
    assert_eq!(state(&r, 25.0), RosterState::Silent);
    // SIGCONT: its alive comes again
    assert_eq!(
        r.observe(&obs(Seen::Answer, 7, 0.0, 26.0, State::Running)),
        Change::Heard
    );
    assert_eq!(state(&r, 27.0), RosterState::Running);
    assert!(r.get("dd_log2source", "r1").unwrap().asked.is_none());
}

#[test]
fn a_clean_stop_is_stopped_never_dead_and_a_failure_is_dead() {
    let mut r = Roster::new(300.0);
    r.observe(&obs(Seen::Alive, 7, 0.0, 0.0, State::Running));
    r.observe(&obs(Seen::Status, 7, 0.0, 1.0, State::Stopping));
    assert_eq!(state(&r, 1.5), RosterState::Stopping);
    r.observe(&obs(Seen::Stop, 7, 0.0, 1.2, State::Stopping));
    assert_eq!(state(&r, 2.0), RosterState::Stopped);
    assert_eq!(state(&r, 86_000.0), RosterState::Stopped);
    let mut fail = obs(Seen::Stop, 8, 5.0, 6.0, State::Stopping);
    fail.failure = Some("broker refused: ACCESS_REFUSED".into());
    assert_eq!(r.observe(&fail), Change::Restarted);
    let row = &r.rows(t(7.0))[0];
    assert_eq!(row.state, RosterState::Dead);
    assert_eq!(
        row.evidence,
        "its last word at 01:46:46Z: broker refused: ACCESS_REFUSED"
    );
    assert_eq!(row.restarts, 1);
}

#[test]
fn declared_never_seen_is_missing_and_declared_stopped_long_ago_too() {
    let mut r = Roster::new(300.0);
    let d = Declared::parse(
        "[[daemon]]\ntool = \"dd_speedo\"\ninstance = \"main\"\nhost = \"pump1\"\n\n\
         [[daemon]]\ntool = \"dd_log2source\"\ninstance = \"r1\"\n",
    )
    .unwrap();
    r.declare(&d);
    let rows = r.rows(t(0.0));
    assert_eq!(rows.len(), 2);
    let speedo = rows.iter().find(|x| x.tool == "dd_speedo").unwrap();
    assert_eq!(speedo.state, RosterState::Missing);
    assert_eq!(speedo.host, "pump1");
    assert_eq!(speedo.evidence, "declared, never seen within the history");
    r.observe(&obs(Seen::Alive, 7, 0.0, 0.0, State::Running));
    r.observe(&obs(Seen::Stop, 7, 0.0, 1.0, State::Stopping));
    let l2s = |r: &Roster, at| {
        r.rows(t(at))
            .into_iter()
            .find(|x| x.tool == "dd_log2source")
            .unwrap()
            .state
    };
    assert_eq!(l2s(&r, 200.0), RosterState::Stopped);
    assert_eq!(l2s(&r, 302.0), RosterState::Missing);
    assert_eq!(r.counts(t(302.0))[RosterState::Missing.index()], 2);
}

#[test]
fn a_restart_is_one_entry_with_its_restarts_counted_and_old_news_ignored() {
    let mut r = Roster::new(300.0);
    r.observe(&obs(Seen::Alive, 7, 0.0, 0.0, State::Running));
    r.observe(&obs(Seen::Stop, 7, 0.0, 3.0, State::Stopping));
    assert_eq!(
        r.observe(&obs(Seen::Start, 9, 4.0, 4.0, State::Starting)),
        Change::Restarted
    );
    assert_eq!(r.len(), 1);
    let row = &r.rows(t(5.0))[0];
    assert_eq!(
        (row.state, row.pid, row.restarts),
        (RosterState::Running, 9, 1)
    );
    // the previous process's alive, read late: ignored
    assert_eq!(
        r.observe(&obs(Seen::Alive, 7, 0.0, 2.0, State::Running)),
        Change::Stale
    );
    assert_eq!(r.rows(t(5.0))[0].pid, 9);
    // a SIGKILL and a restart within the second: same start second, new pid
    assert_eq!(
        r.observe(&obs(Seen::Alive, 10, 4.0, 6.0, State::Running)),
        Change::Restarted
    );
}

#[test]
fn degraded_said_is_degraded_and_messages_parse_from_the_wire() {
    let body = serde_json::json!({
        "alive_interval": 1.0, "counters": {}, "host": "h1", "instance": "a", "pid": 4,
        "started": "2026-12-02T07:00:00Z", "state": "degraded", "time": "2026-12-02T07:00:05Z",
        "tool": "dd_speedo", "uptime_s": 5.0, "version": "0.1.0", "last_alive": null
    });
    let o =
        Observation::from_message("v01.alive.dd_speedo.a", body.to_string().as_bytes()).unwrap();
    assert_eq!(
        (o.kind, o.state, o.alive_interval),
        (Seen::Alive, State::Degraded, 1.0)
    );
    let mut r = Roster::new(300.0);
    r.observe(&o);
    let now = DateTime::parse_from_rfc3339("2026-12-02T07:00:06Z")
        .unwrap()
        .to_utc();
    assert_eq!(r.rows(now)[0].state, RosterState::Degraded);
    let stop = serde_json::json!({
        "alive_interval": 1.0, "event": "stop", "host": "h1", "instance": "a", "pid": 4,
        "started": "2026-12-02T07:00:00Z", "time": "2026-12-02T07:00:07Z",
        "tool": "dd_speedo", "version": "0.1.0"
    });
    let o = Observation::from_message("v01.registry.dd_speedo.a.stop", stop.to_string().as_bytes())
        .unwrap();
    assert_eq!(o.kind, Seen::Stop);
    assert!(Observation::from_message("v01.registry.dd_speedo.a.declared", b"{}").is_none());
    assert!(Observation::from_message("v01.alive.x.y", b"not json").is_none());
    assert!(Observation::from_message("v02.log.x", b"{}").is_none());
}

#[test]
fn ten_thousand_daemons_in_any_order_count_once_each() {
    let mut r = Roster::new(300.0);
    for i in 0..10_000u32 {
        let mut o = obs(Seen::Alive, i, 0.0, f64::from(i % 20), State::Running);
        o.instance = format!("i{i}");
        r.observe(&o);
        r.observe(&o);
    }
    let n = r.counts(t(25.0));
    assert_eq!(n.iter().sum::<usize>(), 10_000);
    // heard at 0..19 s with a 10 s interval: silent when heard before 5 s (0..=4: a quarter)
    assert_eq!(n[RosterState::Silent.index()], 2_500);
}

#[test]
fn a_hosts_word_makes_it_dead_and_a_forget_removes_it() {
    let mut r = Roster::new(300.0);
    r.observe(&obs(Seen::Alive, 7, 0.0, 10.0, State::Running));
    let mut died = obs(Seen::Died, 0, -1e6, 12.0, State::Stopping);
    died.failure = Some("systemd: signal (9)".into());
    assert_eq!(r.observe(&died), Change::Heard);
    let row = &r.rows(t(13.0))[0];
    assert_eq!(row.state, RosterState::Dead);
    assert_eq!(
        row.evidence,
        "its last word at 01:46:52Z: systemd: signal (9)"
    );
    // a word older than what it said since is not taken
    let mut r2 = Roster::new(300.0);
    r2.observe(&obs(Seen::Alive, 7, 0.0, 20.0, State::Running));
    assert_eq!(r2.observe(&died), Change::Stale);
    assert_eq!(r2.rows(t(21.0))[0].state, RosterState::Running);
    // restarted after it: running again
    assert_eq!(
        r.observe(&obs(Seen::Start, 8, 14.0, 14.0, State::Starting)),
        Change::Restarted
    );
    assert_eq!(r.rows(t(15.0))[0].state, RosterState::Running);
    // forgotten: gone; a declared one is back to missing
    assert_eq!(
        r.observe(&obs(Seen::Forget, 0, 0.0, 16.0, State::Stopping)),
        Change::Forgotten
    );
    assert!(r.is_empty());
    // what it said before the forget, read after it (the alive stream comes second): ignored
    assert_eq!(
        r.observe(&obs(Seen::Alive, 8, 14.0, 15.5, State::Running)),
        Change::Stale
    );
    assert!(r.is_empty());
    let d = Declared::parse("[[daemon]]\ntool = \"dd_log2source\"\ninstance = \"r1\"\n").unwrap();
    r.declare(&d);
    r.observe(&obs(Seen::Alive, 9, 20.0, 20.0, State::Running));
    r.observe(&obs(Seen::Forget, 0, 0.0, 21.0, State::Stopping));
    assert_eq!(r.rows(t(22.0))[0].state, RosterState::Missing);
}

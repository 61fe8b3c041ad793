//! Golden tests: each typed spec renders to exactly this PowerDNS 4.7 record content.

use pdm::{CheckOptions, InnerType, LuaSpec, PdmError, Selector, UrlTarget, WeightedAddress};

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn content(spec: &LuaSpec, record_type: InnerType) -> String {
    spec.synthesize(record_type).unwrap_or_else(|e| panic!("{spec:?}: {e}")).content()
}

#[test]
fn ifportup_golden() {
    let spec = LuaSpec::Ifportup {
        port: 5432,
        addresses: strings(&["192.0.2.1", "192.0.2.2"]),
        options: CheckOptions::default(),
    };
    assert_eq!(content(&spec, InnerType::A), r#"A "ifportup(5432, {'192.0.2.1', '192.0.2.2'})""#);
    let spec = LuaSpec::Ifportup {
        port: 443,
        addresses: strings(&["2001:DB8:0::1"]),
        options: CheckOptions { selector: Some(Selector::All), timeout: Some(1), ..Default::default() },
    };
    assert_eq!(
        content(&spec, InnerType::Aaaa),
        r#"AAAA "ifportup(443, {'2001:db8::1'}, {selector='all', timeout='1'})""#
    );
}

#[test]
fn ifurlup_golden() {
    let spec = LuaSpec::Ifurlup {
        url: "https://db.example.test/health".into(),
        tiers: vec![strings(&["192.0.2.1"]), strings(&["198.51.100.1", "198.51.100.2"])],
        options: CheckOptions {
            selector: Some(Selector::Random),
            backup_selector: Some(Selector::Pickclosest),
            timeout: Some(2),
            source: Some("192.0.2.9".parse().unwrap()),
            stringmatch: Some("OK primary".into()),
            useragent: Some("pdm/1".into()),
        },
    };
    assert_eq!(
        content(&spec, InnerType::A),
        "A \"ifurlup('https://db.example.test/health', {{'192.0.2.1'}, {'198.51.100.1', '198.51.100.2'}}, \
         {backupSelector='pickclosest', selector='random', source='192.0.2.9', stringmatch='OK primary', timeout='2', useragent='pdm/1'})\""
    );
}

#[test]
fn ifurlextup_golden() {
    let spec = LuaSpec::Ifurlextup {
        tiers: vec![
            vec![UrlTarget { address: "192.0.2.1".into(), url: "http://127.0.0.1:8001/health".into() }],
            vec![UrlTarget { address: "192.0.2.2".into(), url: "http://127.0.0.1:8002/health".into() }],
        ],
        options: CheckOptions { backup_selector: Some(Selector::All), ..Default::default() },
    };
    assert_eq!(
        content(&spec, InnerType::A),
        "A \"ifurlextup({{['192.0.2.1']='http://127.0.0.1:8001/health'}, {['192.0.2.2']='http://127.0.0.1:8002/health'}}, {backupSelector='all'})\""
    );
}

#[test]
fn pick_functions_golden() {
    let addresses = strings(&["192.0.2.1", "192.0.2.2"]);
    let cases = [
        (LuaSpec::Pickclosest { addresses: addresses.clone() }, r#"A "pickclosest({'192.0.2.1', '192.0.2.2'})""#),
        (LuaSpec::Pickrandom { addresses: addresses.clone() }, r#"A "pickrandom({'192.0.2.1', '192.0.2.2'})""#),
        (LuaSpec::All { addresses: addresses.clone() }, r#"A "all({'192.0.2.1', '192.0.2.2'})""#),
        (
            LuaSpec::Pickwhashed {
                addresses: vec![
                    WeightedAddress { weight: 15, address: "192.0.2.1".into() },
                    WeightedAddress { weight: 100, address: "192.0.2.5".into() },
                ],
            },
            r#"A "pickwhashed({{15, '192.0.2.1'}, {100, '192.0.2.5'}})""#,
        ),
    ];
    for (spec, expected) in cases {
        assert_eq!(content(&spec, InnerType::A), expected);
    }
}

#[test]
fn a_tier_reorder_is_a_flip_and_new_targets_are_not() {
    let tiers = |a: &str, b: &str| LuaSpec::Ifurlup {
        url: "http://h/health".into(),
        tiers: vec![strings(&[a]), strings(&[b])],
        options: CheckOptions { timeout: Some(1), ..Default::default() },
    };
    let live = tiers("192.0.2.1", "192.0.2.2");
    let flipped = tiers("192.0.2.2", "192.0.2.1");
    assert_ne!(content(&live, InnerType::A), content(&flipped, InnerType::A));
    assert_eq!(live.health_checks(InnerType::A), flipped.health_checks(InnerType::A));
    let moved = tiers("192.0.2.3", "192.0.2.1");
    assert!(!moved.health_checks(InnerType::A).is_subset(&live.health_checks(InnerType::A)));
    // Options are part of PowerDNS' check identity: a new timeout means new, cold checks.
    let mut other_options = live.clone();
    if let LuaSpec::Ifurlup { options, .. } = &mut other_options {
        options.timeout = Some(2);
    }
    assert!(other_options.health_checks(InnerType::A).is_disjoint(&live.health_checks(InnerType::A)));
    assert!(LuaSpec::All { addresses: strings(&["192.0.2.1"]) }.health_checks(InnerType::A).is_empty());
}

#[test]
fn long_bodies_are_split_into_character_strings_between_tokens() {
    let addresses: Vec<String> = (1..=40).map(|i| format!("198.51.100.{i}")).collect();
    let spec = LuaSpec::Pickrandom { addresses: addresses.clone() };
    let body = spec.synthesize(InnerType::A).unwrap();
    let content = body.content();
    let chunks: Vec<&str> = content.strip_prefix("A \"").unwrap().strip_suffix('"').unwrap().split("\" \"").collect();
    assert!(chunks.len() > 1, "{content}");
    for chunk in &chunks {
        assert!(chunk.len() <= 255, "chunk of {} bytes", chunk.len());
        assert!(chunk.ends_with(',') || chunk.ends_with(')'), "split inside a token: {chunk:?}");
    }
    // Joined back the way 5.x does (no separator) and 4.7 does (a space), it is the same Lua.
    assert_eq!(chunks.join(" "), body.code);
    assert_eq!(chunks.join("").replace(",'", ", '"), body.code);
}

#[test]
fn invalid_specs_are_refused_with_a_reason() {
    let ok_tiers = vec![strings(&["192.0.2.1"])];
    let cases: Vec<(LuaSpec, InnerType, &str)> = vec![
        (LuaSpec::Pickrandom { addresses: vec![] }, InnerType::A, "empty"),
        (LuaSpec::All { addresses: strings(&["not-an-ip"]) }, InnerType::A, "not an IP"),
        (LuaSpec::All { addresses: strings(&["2001:db8::1"]) }, InnerType::A, "does not fit"),
        (LuaSpec::All { addresses: strings(&["192.0.2.1", "192.0.2.1"]) }, InnerType::A, "twice"),
        (
            LuaSpec::Ifportup { port: 0, addresses: strings(&["192.0.2.1"]), options: CheckOptions::default() },
            InnerType::A,
            "port",
        ),
        (
            LuaSpec::Ifportup {
                port: 80,
                addresses: strings(&["192.0.2.1"]),
                options: CheckOptions { stringmatch: Some("x".into()), ..Default::default() },
            },
            InnerType::A,
            "stringmatch",
        ),
        (
            LuaSpec::Ifurlup { url: "ftp://h/".into(), tiers: ok_tiers.clone(), options: CheckOptions::default() },
            InnerType::A,
            "http",
        ),
        (
            LuaSpec::Ifurlup {
                url: "http://h/'); os.exit()--".into(),
                tiers: ok_tiers.clone(),
                options: CheckOptions::default(),
            },
            InnerType::A,
            "contains",
        ),
        (
            LuaSpec::Ifurlup { url: "http://h/".into(), tiers: vec![], options: CheckOptions::default() },
            InnerType::A,
            "tiers is empty",
        ),
        (
            LuaSpec::Ifurlup { url: "http://h/".into(), tiers: vec![vec![]], options: CheckOptions::default() },
            InnerType::A,
            "empty",
        ),
        (
            LuaSpec::Ifurlup {
                url: "http://h/".into(),
                tiers: ok_tiers.clone(),
                options: CheckOptions { stringmatch: Some("say \"hi\"".into()), ..Default::default() },
            },
            InnerType::A,
            "quotes",
        ),
        (
            LuaSpec::Ifurlup {
                url: "http://h/".into(),
                tiers: ok_tiers.clone(),
                options: CheckOptions { timeout: Some(0), ..Default::default() },
            },
            InnerType::A,
            "timeout",
        ),
        (
            LuaSpec::Pickwhashed { addresses: vec![WeightedAddress { weight: 0, address: "192.0.2.1".into() }] },
            InnerType::A,
            "weight",
        ),
        (
            LuaSpec::Ifurlup {
                url: format!("http://h/{}", "x".repeat(300)),
                tiers: ok_tiers,
                options: CheckOptions::default(),
            },
            InnerType::A,
            "255",
        ),
    ];
    for (spec, record_type, expected) in cases {
        match spec.synthesize(record_type) {
            Err(PdmError::InvalidLua(msg)) => assert!(msg.contains(expected), "{spec:?}: {msg:?} lacks {expected:?}"),
            other => panic!("{spec:?} gave {other:?}"),
        }
    }
}

#[test]
fn specs_parse_from_json_and_refuse_unknown_options() {
    let spec: LuaSpec = serde_json::from_str(
        r#"{"function":"ifurlextup","tiers":[[{"address":"192.0.2.1","url":"http://127.0.0.1:1/"}]],"options":{"timeout":1,"backup_selector":"all"}}"#,
    )
    .unwrap();
    assert!(matches!(spec, LuaSpec::Ifurlextup { .. }));
    for bad in [
        r#"{"function":"ifportup","port":1,"addresses":["192.0.2.1"],"options":{"minimumFailures":"2"}}"#,
        r#"{"function":"ifportup","port":1,"addresses":["192.0.2.1"],"extra":1}"#,
        r#"{"function":"os.execute","addresses":[]}"#,
        r#"{"function":"all","addresses":["192.0.2.1"],"options":{"selector":"everything"}}"#,
    ] {
        assert!(serde_json::from_str::<LuaSpec>(bad).is_err(), "{bad} parsed");
    }
}

#[test]
fn validate_code_catches_structural_breakage() {
    assert!(pdm::lua::validate_code("all({'192.0.2.1'})").is_ok());
    for bad in ["ifurlup(", "all({})", "all({'192.0.2.1'}", "all({'192.0.2.1})", "os.exit()", "all({'a\"b'})"] {
        assert!(pdm::lua::validate_code(bad).is_err(), "{bad} accepted");
    }
}

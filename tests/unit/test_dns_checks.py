"""The DNS checks without sockets: SPF evaluation, DMARC, DKIM, reverse DNS, bounce MX."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping, Sequence

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.dns import checks
from gateway.dns.checks import CheckPlan, CheckResult, DkimExpectation, SendingIp
from gateway.dns.question import Answer, Asks, Query, T, answer_from
from gateway.dns.spf import Identity, check_host, lookup_cost, parse_record
from gateway.signing import keys

Zone = Mapping[tuple[str, str], Sequence[str]]

IP = ipaddress.ip_address("192.0.2.10")
IP6 = ipaddress.ip_address("2001:db8::25")
WHO = Identity("postmaster@example.com", "mta1.example.com")


def run(check: Asks[T], zone: Zone, failing: Sequence[tuple[str, str]] = ()) -> T:
    table = {Query(name, rdtype): Answer(tuple(values)) for (name, rdtype), values in zone.items()}
    table.update({Query(name, rdtype): Answer(failure="timed out") for name, rdtype in failing})
    return answer_from(check, table)


def spf(zone: Zone, ip: ipaddress.IPv4Address | ipaddress.IPv6Address = IP, domain: str = "example.com") -> str:
    outcome = run(check_host(ip, domain, WHO), zone)
    return f"{outcome.result}: {outcome.reason}"


# -- SPF ------------------------------------------------------------------------------------


def test_spf_ip4_with_prefix_and_the_final_all() -> None:
    zone = {("example.com", "TXT"): ["google-site-verification=x", "v=spf1 ip4:192.0.2.0/24 -all"]}
    assert spf(zone) == "pass: example.com: matched ip4:192.0.2.0/24"
    assert spf(zone, ipaddress.ip_address("198.51.100.1")) == "fail: example.com: matched -all"


def test_spf_nested_include_counts_each_include() -> None:
    zone = {("example.com", "TXT"): ["v=spf1 include:a.example ~all"],
            ("a.example", "TXT"): ["v=spf1 include:b.example -all"],
            ("b.example", "TXT"): ["v=spf1 ip4:192.0.2.10 -all"]}
    outcome = run(check_host(IP, "example.com", WHO), zone)
    assert (outcome.result, outcome.lookups, outcome.matched) == ("pass", 2, "include:a.example")
    other = run(check_host(ipaddress.ip_address("192.0.2.99"), "example.com", WHO), zone)
    assert other.result == "softfail"  # include's -all is "no match", the outer ~all decides


def test_spf_include_of_a_domain_without_spf_is_permerror() -> None:
    zone = {("example.com", "TXT"): ["v=spf1 include:gone.example ip4:192.0.2.10 -all"]}
    assert spf(zone) == "permerror: include:gone.example: gone.example has no SPF record (NXDOMAIN)"


def test_spf_redirect_is_followed_and_must_exist() -> None:
    zone = {("example.com", "TXT"): ["v=spf1 redirect=_spf.example.com"],
            ("_spf.example.com", "TXT"): ["v=spf1 a:mta.example.com -all"],
            ("mta.example.com", "A"): ["192.0.2.10"]}
    assert spf(zone) == "pass: _spf.example.com: matched a:mta.example.com"
    broken = {("example.com", "TXT"): ["v=spf1 redirect=nothing.example"]}
    assert spf(broken).startswith("permerror: redirect=nothing.example: nothing.example has no SPF")


def test_spf_eleventh_lookup_is_permerror() -> None:
    zone: dict[tuple[str, str], list[str]] = {
        ("example.com", "TXT"): ["v=spf1 " + " ".join(f"include:i{n}.example" for n in range(11))
                                 + " ip4:192.0.2.10 -all"]}
    for n in range(11):
        zone[(f"i{n}.example", "TXT")] = ["v=spf1 -all"]
    assert spf(zone) == "permerror: more than 10 DNS lookups: the 11th is 'include:i10.example'"
    cost = run(lookup_cost("example.com"), zone)
    assert cost.total == 11 and cost.terms[0] == ("include:i0.example", 1)


def test_spf_third_void_lookup_is_permerror() -> None:
    zone = {("example.com", "TXT"): ["v=spf1 a:v1.example mx:v2.example exists:v3.example ip4:192.0.2.10"]}
    assert spf(zone) == "permerror: more than 2 void lookups: the last is v3.example"


def test_spf_ip6_matches_only_ipv6_clients() -> None:
    zone = {("example.com", "TXT"): ["v=spf1 ip6:2001:db8::/32 -all"]}
    assert spf(zone, IP6) == "pass: example.com: matched ip6:2001:db8::/32"
    assert spf(zone, IP) == "fail: example.com: matched -all"


def test_spf_a_and_mx_with_dual_prefix_lengths() -> None:
    zone = {("example.com", "TXT"): ["v=spf1 mx/24//64 -all"],
            ("example.com", "MX"): ["10 mx.example.com."],
            ("mx.example.com", "A"): ["192.0.2.200"],
            ("mx.example.com", "AAAA"): ["2001:db8::1"]}
    assert spf(zone) == "pass: example.com: matched mx/24//64"
    assert spf(zone, IP6) == "pass: example.com: matched mx/24//64"
    assert spf(zone, ipaddress.ip_address("192.0.3.1")) == "fail: example.com: matched -all"


def test_spf_exists_with_macros() -> None:
    zone = {("example.com", "TXT"): ["v=spf1 exists:%{ir}.%{v}._spf.%{d} -all"],
            ("10.2.0.192.in-addr._spf.example.com", "A"): ["127.0.0.2"]}
    assert spf(zone) == "pass: example.com: matched exists:%{ir}.%{v}._spf.%{d}"


def test_spf_ptr_mechanism_needs_a_validated_name() -> None:
    zone = {("example.com", "TXT"): ["v=spf1 ptr -all"],
            ("10.2.0.192.in-addr.arpa", "PTR"): ["mta1.example.com."],
            ("mta1.example.com", "A"): ["192.0.2.10"]}
    assert spf(zone) == "pass: example.com: matched ptr"


def test_spf_record_problems_are_permerror_or_temperror() -> None:
    two = {("example.com", "TXT"): ["v=spf1 -all", "v=spf1 ~all"]}
    assert spf(two) == "permerror: example.com has 2 SPF records; receivers need exactly one"
    typo = {("example.com", "TXT"): ["v=spf1 ip4:192.0.2.300 -all"]}
    assert spf(typo) == "permerror: example.com: 'ip4:192.0.2.300': '192.0.2.300' is not an IP address"
    unknown = {("example.com", "TXT"): ["v=spf1 include-all"]}
    assert spf(unknown) == "permerror: example.com: unknown or malformed term 'include-all'"
    outcome = run(check_host(IP, "example.com", WHO), {}, failing=[("example.com", "TXT")])
    assert (outcome.result, outcome.reason) == ("temperror", "timed out")


def test_spf_none_and_neutral() -> None:
    assert spf({}) == "none: example.com has no SPF record (NXDOMAIN)"
    assert spf({("example.com", "TXT"): ["v=spf1 ip4:198.51.100.1"]}) == (
        "neutral: example.com: no term matched and there is no 'all'")


def test_spf_modifiers_and_parsing() -> None:
    record = parse_record("v=spf1 ?a:x.example/28 exp=why.%{d} unknown=1 redirect=r.example")
    assert record.redirect == "r.example"
    assert [(d.qualifier, d.mechanism, d.argument, d.cidr4) for d in record.directives] == [
        ("?", "a", "x.example", 28)]


def test_lookup_cost_walks_includes_and_stops_at_loops() -> None:
    zone = {("example.com", "TXT"): ["v=spf1 mx include:a.example redirect=b.example"],
            ("a.example", "TXT"): ["v=spf1 a include:c.example"],
            ("c.example", "TXT"): ["v=spf1 ip4:192.0.2.1"],
            ("b.example", "TXT"): ["v=spf1 exists:%{i}.b.example"]}
    cost = run(lookup_cost("example.com"), zone)
    assert cost.terms == (("mx", 1), ("include:a.example", 3), ("redirect=b.example", 2))
    assert cost.total == 6
    ignored = {("example.com", "TXT"): ["v=spf1 mx -all redirect=b.example"]}
    assert run(lookup_cost("example.com"), ignored).total == 1  # redirect is ignored beside "all"
    loop = {("example.com", "TXT"): ["v=spf1 include:a.example"],
            ("a.example", "TXT"): ["v=spf1 include:example.com"]}
    assert run(lookup_cost("example.com"), loop).problem == "SPF loop: example.com -> a.example -> example.com"


# -- a plan and the whole run ---------------------------------------------------------------

ED_KEY = ed25519.Ed25519PrivateKey.generate()


def expectation(key: keys.PrivateKey = ED_KEY, selector: str = "e1", domain: str = "example.com",
                signing: bool = True) -> DkimExpectation:
    return DkimExpectation(selector, domain, keys.algorithm_of(key), keys.public_key_text(key), signing,
                           keys.zone_record(selector, domain, key))


def plan(**changes: object) -> CheckPlan:
    values: dict[str, object] = dict(
        domain="example.com", bounce_domain="bounces.example.com", gateway_hostname="gw.example.com",
        gateway_ips=frozenset({IP}), sending_ips=(SendingIp(IP, "mta1.example.com"),),
        dkim=(expectation(),))
    values.update(changes)
    return CheckPlan(**values)  # type: ignore[arg-type]


GOOD: dict[tuple[str, str], list[str]] = {
    ("bounces.example.com", "TXT"): ["v=spf1 ip4:192.0.2.10 -all"],
    ("bounces.example.com", "MX"): ["10 gw.example.com."],
    ("example.com", "TXT"): ["v=spf1 include:bounces.example.com ~all"],
    ("e1._domainkey.example.com", "TXT"): [keys.txt_value(ED_KEY)],
    ("_dmarc.example.com", "TXT"): ["v=DMARC1; p=none; rua=mailto:d@example.com"],
    ("10.2.0.192.in-addr.arpa", "PTR"): ["mta1.example.com."],
    ("mta1.example.com", "A"): ["192.0.2.10"],
    ("mta1.example.com", "TXT"): ["v=spf1 a -all"],
    ("_smtp._tls.example.com", "TXT"): ["v=TLSRPTv1; rua=mailto:tls@example.com"],
}


def by_check(results: Sequence[CheckResult]) -> dict[str, CheckResult]:
    return {f"{r.check} {r.subject}": r for r in results}


def test_a_good_zone_passes_everything() -> None:
    results = run(checks.run_checks(plan()), GOOD)
    assert [(r.check, r.status) for r in results] == [
        ("SPF", "pass"), ("SPF", "pass"), ("DKIM", "pass"), ("DMARC", "pass"), ("DMARC alignment", "pass"),
        ("PTR", "pass"), ("HELO SPF", "pass"), ("bounce MX", "pass"), ("MTA-STS", "info"), ("TLS-RPT", "info")]
    assert not any(r.blocks for r in results)
    assert by_check(results)["SPF bounces.example.com"].detail == (
        "envelope (bounce) domain: pass for 192.0.2.10 (0 of 10 lookups in the record)")


def test_spf_not_covering_a_pool_ip_fails_with_the_record_to_publish() -> None:
    second = ipaddress.ip_address("192.0.2.11")
    sending = (SendingIp(IP, "mta1.example.com"), SendingIp(second, "mta2.example.com"))
    [result] = run(checks.check_spf(plan(sending_ips=sending), "bounces.example.com", required=True), GOOD)
    assert (result.status, result.blocks) == ("fail", True)
    assert result.detail == "envelope (bounce) domain: 192.0.2.11: fail (bounces.example.com: matched -all)"
    assert result.fix == 'replace the SPF record with bounces.example.com. IN TXT "v=spf1 ip4:192.0.2.11 ip4:192.0.2.10 -all"'


def test_missing_spf_on_a_dedicated_bounce_domain_suggests_dash_all() -> None:
    [result] = run(checks.check_spf(plan(), "bounces.example.com", required=True), {})
    assert result.fix == 'publish bounces.example.com. IN TXT "v=spf1 ip4:192.0.2.10 -all"'
    [own] = run(checks.check_spf(plan(), "example.com", required=False), {})
    assert (own.status, own.blocks) == ("warn", False)
    assert own.fix == 'publish example.com. IN TXT "v=spf1 ip4:192.0.2.10 ~all"'


def test_spf_fix_for_a_record_with_a_typo_and_a_record_with_a_loop() -> None:
    typo = {("bounces.example.com", "TXT"): ["v=spf1 ip4:192.0.2.0/33 -all"]}
    [result] = run(checks.check_spf(plan(), "bounces.example.com", required=True), typo)
    assert result.fix == ("correct the SPF record of bounces.example.com ('ip4:192.0.2.0/33': prefix "
                          "length out of range) and add ip4:192.0.2.10 to it")
    loop = {("bounces.example.com", "TXT"): ["v=spf1 ip4:192.0.2.10 include:a.example -all"],
            ("a.example", "TXT"): ["v=spf1 include:bounces.example.com"]}
    [looped] = run(checks.check_spf(plan(), "bounces.example.com", required=True), loop)
    assert (looped.status, looped.blocks) == ("warn", False)
    assert looped.detail == ("envelope (bounce) domain: pass for 192.0.2.10, but SPF loop: bounces.example.com "
                             "-> a.example -> bounces.example.com: other senders get permerror")


# -- DKIM -----------------------------------------------------------------------------------


def dkim(zone: Zone, *expected: DkimExpectation) -> list[CheckResult]:
    return run(checks.check_dkim(plan(dkim=expected or (expectation(),))), zone)


def test_dkim_key_mismatch_gives_the_record_to_publish() -> None:
    other = ed25519.Ed25519PrivateKey.generate()
    [result] = dkim({("e1._domainkey.example.com", "TXT"): [keys.txt_value(other)]})
    assert (result.status, result.detail) == ("fail", "published p= is a different key than the configured key file")
    assert result.fix == f"replace it with {keys.zone_record('e1', 'example.com', ED_KEY)}"


@pytest.mark.parametrize(("record", "problem"), [
    ("v=DKIM1; k=ed25519; p=", "p= is empty: the key is revoked"),
    ("v=DKIM1; k=rsa; p=AAAA", "k=rsa, but the configured key is ed25519"),
    ("k=ed25519; v=DKIM1; p=AAAA", "v= must be DKIM1 and come first"),
    ("v=DKIM1; k=ed25519", "the record has no p= (public key)"),
    ("v=DKIM1; k=ed25519; p=%%%", "published p= is a different key than the configured key file"),
])
def test_dkim_record_problems(record: str, problem: str) -> None:
    assert checks.dkim_key_problem(record, expectation()) == problem


def test_dkim_accepts_an_rsa_key_published_as_pkcs1() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pkcs1 = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    record = f"v=DKIM1; k=rsa; p={base64.b64encode(pkcs1).decode()}"
    assert checks.dkim_key_problem(record, expectation(key, "r1")) is None


def test_dkim_missing_record_fails_for_signing_and_warns_for_rotation() -> None:
    spare = expectation(ed25519.Ed25519PrivateKey.generate(), "e2", signing=False)
    results = dkim({("e1._domainkey.example.com", "TXT"): [keys.txt_value(ED_KEY)]}, expectation(), spare)
    assert [(r.subject, r.status, r.required) for r in results] == [
        ("e1._domainkey.example.com", "pass", True), ("e2._domainkey.example.com", "warn", False)]
    assert results[1].fix == f"publish {spare.record}"


def test_no_signing_key_configured_is_a_failure() -> None:
    [result] = run(checks.check_dkim(plan(dkim=())), GOOD)
    assert result.blocks and result.fix is not None and "gateway dkim keygen example.com" in result.fix


# -- DMARC ----------------------------------------------------------------------------------


def test_dmarc_parsing() -> None:
    record = checks.parse_dmarc("v=DMARC1; p=Quarantine; sp=reject; adkim=s; pct=50; rua=mailto:a@x, mailto:b@y")
    assert (record.policy, record.subdomain_policy, record.adkim, record.aspf, record.pct) == (
        "quarantine", "reject", "s", "r", 50)
    assert record.rua == ("mailto:a@x", "mailto:b@y")
    for bad, reason in [("v=DMARC1; rua=mailto:a@x", "p=(missing)"), ("p=none; v=DMARC1", "must start"),
                        ("v=DMARC1; p=none; adkim=x", "adkim=x"), ("v=DMARC1; p=none; pct=200", "pct=200")]:
        with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            checks.parse_dmarc(bad)


def test_alignment_rules() -> None:
    assert checks.organizational_domain("news.shop.example.co.uk") == "example.co.uk"
    assert checks.organizational_domain("mail.example.com") == "example.com"
    assert checks.aligned("bounces.example.com", "example.com", "r")
    assert not checks.aligned("bounces.example.com", "example.com", "s")
    assert not checks.aligned("example.net", "example.com", "r")


def test_missing_dmarc_fails_with_a_record_to_publish() -> None:
    results = run(checks.check_dmarc(plan()), {})
    assert [(r.check, r.status) for r in results] == [("DMARC", "fail")]
    assert results[0].fix == 'publish _dmarc.example.com. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@example.com"'


def test_dmarc_inherited_from_the_organizational_domain_uses_sp() -> None:
    zone = {("_dmarc.example.com", "TXT"): ["v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@example.com"]}
    results = run(checks.check_dmarc(plan(domain="news.example.com")), zone)
    assert (results[0].subject, results[0].detail) == ("_dmarc.example.com",
                                                       "p=quarantine (inherited from example.com), pct=100")


def test_strict_alignment_with_foreign_bounce_domain_fails() -> None:
    zone = {("_dmarc.news.example.com", "TXT"): ["v=DMARC1; p=none; adkim=s"]}
    results = run(checks.check_dmarc(plan(domain="news.example.com", bounce_domain="bounce.example.net")), zone)
    alignment = by_check(results)["DMARC alignment news.example.com"]
    assert alignment.status == "fail"
    assert alignment.detail == ("DKIM d=example.com not aligned (adkim=s); "
                                "SPF bounce.example.net not aligned (aspf=r)")
    assert alignment.fix is not None and alignment.fix.endswith("or relax the record to adkim=r; aspf=r")
    assert by_check(results)["DMARC reports _dmarc.news.example.com"].status == "warn"


def test_reports_to_another_organization_need_its_authorization() -> None:
    zone = {("_dmarc.example.com", "TXT"): ["v=DMARC1; p=none; rua=mailto:r@example.com,mailto:x@reports.example.net"]}
    results = run(checks.check_dmarc(plan()), zone)
    [warning] = [r for r in results if r.check == "DMARC reports"]
    assert (warning.subject, warning.status) == ("example.com._report._dmarc.reports.example.net", "warn")
    assert warning.fix == ('ask the operator of reports.example.net to publish example.com._report._dmarc.'
                           'reports.example.net. IN TXT "v=DMARC1", or send reports to an address under example.com')
    authorized = {**zone, ("example.com._report._dmarc.reports.example.net", "TXT"): ["v=DMARC1"]}
    assert [r.check for r in run(checks.check_dmarc(plan()), authorized)] == ["DMARC", "DMARC alignment"]


# -- reverse DNS and bounce MX --------------------------------------------------------------


def reverse(zone: Zone, helo: str = "mta1.example.com") -> CheckResult:
    return run(checks.check_reverse_dns(SendingIp(IP, helo)), zone)


def test_fcrdns_passes_and_fails() -> None:
    assert reverse(GOOD).detail == "192.0.2.10 -> mta1.example.com -> 192.0.2.10"
    missing = reverse({})
    assert (missing.status, missing.detail) == ("fail", "no PTR record for 192.0.2.10")
    assert missing.fix == ("ask the holder of 192.0.2.10 (hosting provider or ISP) to set "
                           "10.2.0.192.in-addr.arpa. IN PTR mta1.example.com. and publish "
                           "mta1.example.com. IN A 192.0.2.10")
    elsewhere = reverse({("10.2.0.192.in-addr.arpa", "PTR"): ["host.isp.example."],
                         ("host.isp.example", "A"): ["198.51.100.7"]})
    assert (elsewhere.status, elsewhere.detail) == (
        "fail", "PTR host.isp.example -> 198.51.100.7: not forward-confirmed (needs 192.0.2.10)")


def test_fcrdns_with_another_name_than_helo_warns() -> None:
    result = reverse(GOOD, helo="out.example.com")
    assert (result.status, result.blocks) == ("warn", False)
    assert result.fix is not None and result.fix.startswith('set helo = "mta1.example.com" for 192.0.2.10')


def test_helo_spf_is_recommended_with_the_record_to_publish() -> None:
    other = ipaddress.ip_address("192.0.2.11")
    sending = (SendingIp(IP, "mta1.example.com"), SendingIp(other, "mta1.example.com"))
    [shared] = run(checks.check_helo_spf(sending), GOOD)
    assert (shared.status, shared.blocks) == ("warn", False)
    assert shared.detail.startswith("192.0.2.11: fail")
    assert shared.fix == 'publish mta1.example.com. IN TXT "v=spf1 ip4:192.0.2.10 ip4:192.0.2.11 -all"'
    [missing] = run(checks.check_helo_spf((SendingIp(IP, "mta9.example.com"),)), GOOD)
    assert (missing.check, missing.subject, missing.status) == ("HELO SPF", "mta9.example.com", "warn")
    assert missing.detail.startswith("192.0.2.10: none")


def test_bounce_mx() -> None:
    assert run(checks.check_bounce_mx(plan()), GOOD).status == "pass"
    by_address = {("bounces.example.com", "MX"): ["5 in.example.com."], ("in.example.com", "A"): ["192.0.2.10"]}
    assert run(checks.check_bounce_mx(plan()), by_address).detail == "MX in.example.com resolves to a gateway address"
    wrong = run(checks.check_bounce_mx(plan()), {("bounces.example.com", "MX"): ["10 mx.elsewhere.example."]})
    assert (wrong.status, wrong.required) == ("warn", False)
    assert wrong.fix == "publish bounces.example.com. IN MX 10 gw.example.com."
    null = run(checks.check_bounce_mx(plan()), {("bounces.example.com", "MX"): ["0 ."]})
    assert null.detail == "null MX: bounces cannot come back"


def test_dkim_testing_flag_and_duplicate_records() -> None:
    name = ("e1._domainkey.example.com", "TXT")
    [testing] = dkim({name: [keys.txt_value(ED_KEY) + "; t=y:s"]})
    assert (testing.status, testing.fix) == ("warn", "remove t=y from the record once signing works")
    [twice] = dkim({name: [keys.txt_value(ED_KEY), "v=DKIM1; k=ed25519; p=AAAA"]})
    assert (twice.status, twice.detail) == ("fail", "2 TXT records; verifiers may pick either")


def test_dns_failures_are_reported_as_failed_checks() -> None:
    ptr = run(checks.check_reverse_dns(SendingIp(IP, "mta1.example.com")), {},
              failing=[("10.2.0.192.in-addr.arpa", "PTR")])
    assert (ptr.status, ptr.detail) == ("fail", "PTR lookup failed: timed out")
    [dmarc] = run(checks.check_dmarc(plan()), {}, failing=[("_dmarc.example.com", "TXT")])
    assert (dmarc.status, dmarc.detail) == ("fail", "lookup failed: timed out")
    [spf_result] = run(checks.check_spf(plan(), "bounces.example.com", required=True), {},
                       failing=[("bounces.example.com", "TXT")])
    assert spf_result.blocks and spf_result.detail.endswith("192.0.2.10: temperror (timed out)")
    assert spf_result.fix == "make the nameservers of bounces.example.com answer, then run the check again"

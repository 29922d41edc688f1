"""The error-policy-retry probe asks libvirt's parser (no schema validation) and decides by
what libvirt kept: upstream libvirt's real refusal, a recorded openEuler acceptance (its
parser keeps the XML its schema lacks), and a libvirt that drops the attributes."""
import libvirt
from lxml import etree

from lab import hostfacts
from lab import config

# libvirt 9.0 (Debian 12), recorded on this machine: defineXMLFlags(xml, 0) and (xml, VALIDATE)
UPSTREAM_PARSER = "XML error: Invalid value for attribute 'error_policy' in element 'driver': 'retry'."
UPSTREAM_SCHEMA = ("XML document failed to validate against schema: Unable to validate doc against "
                   "/usr/share/libvirt/schemas/domain.rng\nExtra element devices in interleave\n"
                   "Element domain failed to validate content\n")


class Refused(libvirt.libvirtError):
    def __init__(self, msg):
        Exception.__init__(self, msg)
        self.msg = msg

    def get_error_message(self):
        return self.msg


class Dom:
    def __init__(self, xml):
        self.xml = xml

    def XMLDesc(self, flags=0):
        return self.xml

    def undefineFlags(self, flags=0):
        pass


class Conn:
    """parser(xml) -> the XML libvirt keeps, or raises; schema(xml) raises or passes."""

    def __init__(self, parser, schema):
        self.parser, self.schema, self.flags = parser, schema, []

    def defineXMLFlags(self, xml, flags):
        self.flags.append(flags)
        if flags & libvirt.VIR_DOMAIN_DEFINE_VALIDATE:
            self.schema(xml)
        return Dom(self.parser(xml))


def upstream_parser(xml):
    if "error_policy=\"retry\"" in xml or "error_policy='retry'" in xml:
        raise Refused(UPSTREAM_PARSER)
    return xml


def openeuler_parser(xml):          # openEuler 24.03's libvirt 9.10.0 with its retry patch: kept as given
    return xml


def dropping_parser(xml):
    t = etree.fromstring(xml.encode())
    for d in t.iter("driver"):
        d.attrib.pop("retry_interval", None)
    return etree.tostring(t).decode()


def rng_without_retry(xml):          # openEuler's domaincommon.rng has no retry value nor retry_* attributes
    if "retry" in xml:
        raise Refused(UPSTREAM_SCHEMA)


def cfg():
    return config.load(config.REPO / "labs" / "local.toml")


def test_upstream_libvirt_refuses_in_its_parser_so_the_suites_use_the_override():
    c = Conn(upstream_parser, rng_without_retry)
    ok, why = hostfacts.probe_retry_policy(c, cfg())
    assert not ok and "parser refuses" in why and "Invalid value for attribute 'error_policy'" in why
    assert set(c.flags) == {0}, "the probe must not validate against the schema"
    form, _ = hostfacts.retry_form({"error-policy-retry": hostfacts.Capability("error-policy-retry", ok, why),
                               "qemu-retry": hostfacts.Capability("qemu-retry", True, "openEuler QEMU")})
    assert form == "override"


def test_openeulers_libvirt_keeps_the_xml_its_schema_lacks_so_the_suites_use_the_guides_xml():
    c = Conn(openeuler_parser, rng_without_retry)
    ok, why = hostfacts.probe_retry_policy(c, cfg())
    assert ok, why
    assert "REFUSES the guide's XML" in why and "users who validate" in why, "the schema finding is reported"
    form, _ = hostfacts.retry_form({"error-policy-retry": hostfacts.Capability("error-policy-retry", ok, why),
                               "qemu-retry": hostfacts.Capability("qemu-retry", True, "openEuler QEMU")})
    assert form == "xml", "with the extension the documented XML is used, never <qemu:override>"


def test_a_libvirt_that_drops_the_attributes_lacks_the_extension():
    ok, why = hostfacts.probe_retry_policy(Conn(dropping_parser, lambda x: None), cfg())
    assert not ok and "dropped" in why and "retry_interval" in why

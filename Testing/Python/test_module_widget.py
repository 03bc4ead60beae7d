"""The module's widget code against the Qt classes it drives, without a Slicer application.

Slicer's widget code talks to Qt through PythonQt (``widget.connect("signal(int)", slot)``, properties as
attributes, public methods), which is not on PyPI. The Qt class metadata is: these tests check every signal,
property and method the widget uses on a ``self.ui`` widget (and the timer, menu and actions it makes) against
Qt's own meta-objects from PySide6, and against the CTK/MRML widget headers for Slicer's classes. A renamed
signal or a typo in a property name fails here instead of inside Slicer.
"""
from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PySide6 import QtCore, QtGui, QtWidgets  # a test requirement: a missing install must fail, not skip

MODULE_DIR = Path(__file__).resolve().parents[2] / "PromptSeg"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "PromptSeg.ui"
SOURCES = [MODULE_DIR / "PromptSeg.py", *sorted((MODULE_DIR / "PromptSegWidgets").glob("*.py"))]
"""The widget code: the module file and the panel mixins it combines."""
# What the widget code makes itself (not from the .ui): attribute of ``self`` -> Qt class.
OWN_OBJECTS = {"pollTimer": "QTimer", "installMenu": "QMenu"}
# Local names the widget code gives to Qt objects, always of one class.
LOCAL_OBJECTS = {"action": "QAction", "button": "QPushButton", "cancelButton": "QPushButton", "spinBox": "QSpinBox",
                 "box": "QSpinBox", "comboBox": "QComboBox", "completer": "QCompleter"}


@dataclass(frozen=True)
class SlicerClass:
    """A CTK/MRML widget class as its header declares it: Qt base class, and what it adds."""

    base: str
    signals: frozenset = field(default_factory=frozenset)
    properties: frozenset = field(default_factory=frozenset)
    methods: frozenset = field(default_factory=frozenset)  # public slots and Q_INVOKABLE methods


# From CTK Libs/Widgets/ctkCollapsibleButton.h, Slicer Libs/MRML/Widgets/qMRMLNodeComboBox.h and qMRMLWidget.h.
SLICER_CLASSES = {
    "ctkCollapsibleButton": SlicerClass(
        "QAbstractButton", frozenset({"contentsCollapsed(bool)"}),
        frozenset({"collapsed", "collapsedHeight", "contentsFrameShape", "contentsFrameShadow", "contentsLineWidth",
                   "contentsMidLineWidth", "buttonTextAlignment", "indicatorAlignment"}),
        frozenset({"setCollapsed", "collapsed"})),
    "qMRMLNodeComboBox": SlicerClass(
        "QWidget",
        frozenset({"currentNodeChanged(vtkMRMLNode*)", "currentNodeChanged(bool)", "currentNodeIDChanged(QString)",
                   "nodeActivated(vtkMRMLNode*)", "nodeAdded(vtkMRMLNode*)", "nodeAddedByUserAction(vtkMRMLNode*)"}),
        frozenset({"currentNodeID", "nodeTypes", "showHidden", "showChildNodeTypes", "hideChildNodeTypes", "baseName",
                   "noneEnabled", "addEnabled", "removeEnabled", "editEnabled", "renameEnabled",
                   "interactionNodeSingletonTag", "selectNodeUponCreation", "noneDisplay", "sizeAdjustPolicy"}),
        frozenset({"currentNode", "setCurrentNode", "setCurrentNodeID", "setMRMLScene", "mrmlScene", "nodeCount",
                   "nodeFromIndex", "addNode"})),
    "qMRMLWidget": SlicerClass("QWidget", frozenset({"mrmlSceneChanged(vtkMRMLScene*)"}), frozenset(),
                               frozenset({"setMRMLScene", "mrmlScene"})),
}


def qt_class(name: str):
    for module in (QtWidgets, QtGui, QtCore):
        if hasattr(module, name):
            return getattr(module, name)
    raise AssertionError(f"{name} is not a Qt class")


def meta_names(meta_object, kind) -> set[str]:
    return {bytes(meta_object.method(i).methodSignature()).decode() for i in range(meta_object.methodCount())
            if meta_object.method(i).methodType() == kind}


def signals(class_name: str) -> set[str]:
    custom = SLICER_CLASSES.get(class_name)
    if custom:
        return set(custom.signals) | signals(custom.base)
    return meta_names(qt_class(class_name).staticMetaObject, QtCore.QMetaMethod.MethodType.Signal)


def slots(class_name: str) -> set[str]:
    custom = SLICER_CLASSES.get(class_name)
    if custom:
        return {m for m in custom.methods} | slots(custom.base)
    return {s.split("(")[0] for s in meta_names(qt_class(class_name).staticMetaObject,
                                                  QtCore.QMetaMethod.MethodType.Slot)}


def has_property(class_name: str, name: str) -> bool:
    custom = SLICER_CLASSES.get(class_name)
    if custom:
        return name in custom.properties or has_property(custom.base, name)
    return qt_class(class_name).staticMetaObject.indexOfProperty(name) >= 0


def has_method(class_name: str, name: str) -> bool:
    custom = SLICER_CLASSES.get(class_name)
    if custom:
        return name in custom.methods or has_method(custom.base, name)
    return callable(getattr(qt_class(class_name), name, None))


def normalized(signature: str) -> str:
    """Qt's normalised form: no spaces, ``const T&`` as ``T``."""
    signature = re.sub(r"\s+", "", signature)
    return re.sub(r"const(\w+)&", r"\1", signature)


@pytest.fixture(scope="module")
def ui_classes() -> dict[str, str]:
    return {w.get("name"): w.get("class") for w in ET.parse(UI_FILE).getroot().iter("widget")}


def receiver_class(node: ast.expr, ui_classes: dict[str, str]) -> str | None:
    """The Qt class of ``self.ui.NAME``, ``self.<own object>`` or ``<menu>.addAction(...)``; None otherwise."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui":
        return ui_classes[node.attr]
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return OWN_OBJECTS.get(node.attr)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "addAction":
        return "QAction"
    if isinstance(node, ast.Name):
        return LOCAL_OBJECTS.get(node.id)
    return None


def uses(ui_classes):
    """(class, kind, name, "file:line") for each connect, method call and property use on a Qt object."""
    found = []
    for source in SOURCES:
        tree = ast.parse(source.read_text())
        calls = {id(n.func): n for n in ast.walk(tree) if isinstance(n, ast.Call)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            owner = receiver_class(node.value, ui_classes)
            if owner is None:
                continue
            where = f"{source.name}:{node.lineno}"
            if node.attr == "connect":
                found.append((owner, "signal", calls[id(node)].args[0].value, where))
            elif id(node) in calls:
                found.append((owner, "method", node.attr, where))
            else:
                found.append((owner, "property", node.attr, where))
    return found


def test_ui_file_has_every_widget_the_module_uses():
    root = ET.parse(UI_FILE).getroot()
    widgets = {w.get("name"): w for w in root.iter("widget")}
    source = "\n".join(path.read_text() for path in SOURCES)
    used = set(re.findall(r"\.ui\.(\w+)", source))  # self.ui in the widget, widget.ui in the test class
    assert used and not used - set(widgets), f"missing in PromptSeg.ui: {sorted(used - set(widgets))}"
    assert widgets["inputVolumeSelector"].get("class") == "qMRMLNodeComboBox"
    titles = {w.findtext("property/string") for w in root.iter("widget") if w.get("class") == "ctkCollapsibleButton"}
    assert {"PET/CT tumour and prognosis", "Propagate a segment"} <= titles


def test_every_signal_property_and_method_the_widget_uses_exists(ui_classes):
    found = uses(ui_classes)
    kinds = {kind for _, kind, _, _ in found}
    assert kinds == {"signal", "method", "property"} and len(found) > 100  # the walk sees the widget code
    wrong = []
    for owner, kind, name, where in found:
        ok = (normalized(name) in signals(owner) if kind == "signal" else
              has_method(owner, name) if kind == "method" else has_property(owner, name))
        if not ok:
            wrong.append(f"{where}: {owner} has no {kind} {name}")
    assert not wrong, "\n".join(wrong)


def test_every_qt_class_and_enum_the_widget_names_exists():
    """``qt.QCompleter``, ``qt.QFileDialog.getOpenFileName``, ``qt.Qt.MatchContains``..."""
    named = set()
    for node in (n for path in SOURCES for n in ast.walk(ast.parse(path.read_text()))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "qt":
            named.add((node.attr, None))
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "qt"):
            named.add((node.value.attr, node.attr))
    assert ("QFileDialog", "getOpenFileName") in named
    for class_name, attribute in named:
        owner = QtCore.Qt if class_name == "Qt" else qt_class(class_name)
        assert attribute is None or hasattr(owner, attribute), f"qt.{class_name}.{attribute} does not exist"


def test_the_check_catches_wrong_names(ui_classes):
    """The same lookups refuse what PythonQt would refuse at run time."""
    assert normalized("currentTextChanged(const QString &)") in signals("QComboBox")
    assert "currentIndexChanged(QString)" not in signals("QComboBox")  # Qt 5 only overload, gone in Qt 6 too
    assert "currentNodeChanged(vtkMRMLNode*)" in signals("qMRMLNodeComboBox")
    assert "clicked(bool)" in signals("ctkCollapsibleButton")  # from QAbstractButton
    assert "contentsCollapsed(bool)" not in signals("QPushButton")
    assert has_property("QPushButton", "enabled") and not has_property("QPushButton", "enable")
    assert has_property("QSpinBox", "maximum") and not has_property("QLineEdit", "value")
    assert has_method("QComboBox", "findData") and not has_method("QComboBox", "findNode")
    assert not has_property("qMRMLNodeComboBox", "currentText")  # a QWidget, not a QComboBox


def test_ui_properties_and_connections_exist(ui_classes):
    root = ET.parse(UI_FILE).getroot()
    wrong = []
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("stdset") != "0" and not has_property(widget.get("class"), prop.get("name")):
                wrong.append(f"{widget.get('name')} ({widget.get('class')}): no property {prop.get('name')}")
    connections = root.findall("connections/connection")
    assert connections
    for connection in connections:
        sender, receiver = ui_classes[connection.findtext("sender")], ui_classes[connection.findtext("receiver")]
        if normalized(connection.findtext("signal")) not in signals(sender):
            wrong.append(f"{sender} has no signal {connection.findtext('signal')}")
        if connection.findtext("slot").split("(")[0] not in slots(receiver):
            wrong.append(f"{receiver} has no slot {connection.findtext('slot')}")
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------------------------ settings saved with the scene
SETTINGS = {"QCheckBox": "bool", "QSpinBox": "int", "QDoubleSpinBox": "float", "QLineEdit": "str",
            "QComboBox": "str", "QPlainTextEdit": "str", "qMRMLNodeComboBox": "node"}
"""Widget classes that hold a setting -> the parameter type that can hold it."""
NOT_SETTINGS = {"addTargetLineEdit": "a target typed before Add, then moved into the target list",
                "descriptionTextEdit": "shows the model's description, read only"}


def _parameter_node() -> tuple[dict[str, tuple[str, object, list | None]], dict[str, str]]:
    """PromptSeg.py's parameter node fields (name -> (type, default, Choice values)) and BOUND_BY_HAND."""
    tree = ast.parse((MODULE_DIR / "PromptSeg.py").read_text())
    fields, by_hand = {}, {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "PromptSegParameterNode":
            for item in node.body:
                if isinstance(item, ast.AnnAssign):
                    kind, choices = ast.unparse(item.annotation), None
                    if kind.startswith("Annotated["):
                        base, choice = item.annotation.slice.elts
                        kind, choices = ast.unparse(base), ast.literal_eval(choice.args[0])
                    kind = "node" if kind.startswith("slicer.vtkMRML") else kind
                    default = (item.value.id if isinstance(item.value, ast.Name) else ast.literal_eval(item.value)
                               if item.value is not None else None)
                    fields[item.target.id] = (kind, default, choices)
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "BOUND_BY_HAND":
            by_hand = ast.literal_eval(node.value)
    return fields, by_hand


def _ui_value(widget: ET.Element):
    """A setting widget's value as the .ui file leaves it (Qt's default where it sets none)."""
    props = {p.get("name"): p[0] for p in widget.findall("property")}
    cls = widget.get("class")
    if cls == "QCheckBox":
        return props["checked"].text == "true" if "checked" in props else False
    if cls in ("QSpinBox", "QDoubleSpinBox"):
        value = props["value"].text if "value" in props else props["minimum"].text if "minimum" in props else "0"
        return int(value) if cls == "QSpinBox" else float(value)
    if cls == "QComboBox":
        items = [i.find("property/string").text for i in widget.findall("item")]
        return items[0] if items else None
    return props["text"].text or "" if "text" in props else ""


def test_every_panel_setting_is_a_parameter_with_the_uis_default():
    """A saved scene restores every panel: each setting widget is bound to a parameter of its type, through the
    .ui (SlicerParameterName) or BOUND_BY_HAND, and the parameter's default is what the .ui shows."""
    fields, by_hand = _parameter_node()
    root = ET.parse(UI_FILE).getroot()
    bound = {}
    for widget in root.iter("widget"):
        cls, name = widget.get("class"), widget.get("name")
        if cls not in SETTINGS or name in NOT_SETTINGS:
            continue
        tagged = [p.find("string").text for p in widget.findall("property") if p.get("name") == "SlicerParameterName"]
        assert bool(tagged) != (name in by_hand), f"{name} must be bound once: in the .ui or in BOUND_BY_HAND"
        parameter = tagged[0] if tagged else by_hand[name]
        assert parameter in fields, f"{name} is bound to {parameter}, which PromptSegParameterNode lacks"
        assert parameter not in bound, f"{name} and {bound.get(parameter)} share the parameter {parameter}"
        bound[parameter] = name
        kind, default, choices = fields[parameter]
        assert kind == SETTINGS[cls], f"{name} ({cls}) cannot hold the {kind} parameter {parameter}"
        if tagged and cls == "QComboBox":  # the Choice connector refills the box: same items, same order
            assert choices == [i.find("property/string").text for i in widget.findall("item")], name
        if tagged and cls != "qMRMLNodeComboBox" and parameter != "region":  # the parameter fills the empty box
            shown = _ui_value(widget)
            assert default == shown, f"{parameter} defaults to {default!r}, the .ui shows {shown!r}"
    assert set(fields) == set(bound), f"parameters no widget shows: {sorted(set(fields) - set(bound))}"
    code = "\n".join(path.read_text() for path in SOURCES)
    for name, parameter in by_hand.items():  # each is written on change and read back into the widget
        assert f'"{parameter}"' in code or f"_setByHand(\"{parameter}\"" in code, f"{parameter} is never written"
        assert f"p.{parameter}" in code or f"_parameterNode.{parameter}" in code, f"{parameter} is never restored"

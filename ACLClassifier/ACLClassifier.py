"""ACLClassifier: anterior cruciate ligament classification of sagittal knee MR (Slicer glue over mskai)."""

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

import mskai


class ACLClassifier(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        parent.title = "ACLClassifier"
        parent.categories = ["Quantification"]
        parent.contributors = ["SlicerAutoSegMSK developers"]
        parent.helpText = (
            "Classifies the anterior cruciate ligament on the sagittal knee series (healthy, minor strain, "
            "partial or complete rupture) and shows a heat map of the evidence. " + mskai.DEMO_NOTICE
        )
        parent.acknowledgementText = "Sample knee data: pymskt project (MIT licence)."


class ACLClassifierWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ACLClassifier.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.statusLabel.text = mskai.DEMO_NOTICE
        self.logic = ACLClassifierLogic()


class ACLClassifierLogic(ScriptedLoadableModuleLogic):
    """Runs the mskai engine; holds no widget references."""

    def engineVersion(self):
        """Version of the mskai engine this module drives."""
        return mskai.__version__


class ACLClassifierTest(ScriptedLoadableModuleTest):
    def runTest(self):
        slicer.mrmlScene.Clear()
        self.assertTrue(ACLClassifierLogic().engineVersion())

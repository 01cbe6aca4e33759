"""Class names of the data sets sslbench reads: VOC's 20 (the embedded data's classes too), and the embedded
classes standing for CIFAR-10's and STL-10's ten."""

from __future__ import annotations

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
VOC_SEG_CLASSES = ("background", *VOC_CLASSES)  # VOC's segmentation label order: 0 background, 1..20 the classes
CLASS_INDEX = {c: i for i, c in enumerate(VOC_CLASSES)}

# Embedded classes standing for CIFAR-10's airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck.
CIFAR10_CLASSES = ("aeroplane", "car", "bird", "cat", "cow", "dog", "sheep", "horse", "boat", "bus")
# The same ten standing for STL-10's airplane, bird, car, cat, deer, dog, horse, monkey, ship, truck.
STL10_CLASSES = ("aeroplane", "bird", "car", "cat", "cow", "dog", "horse", "sheep", "boat", "bus")

"""The encoders the U-Net can use, by torchvision name, with the channels of their five feature maps
(strides 2, 4, 8, 16, 32). Pure data, so params validation knows the names without importing torch."""

ENCODER_CHANNELS = {
    "resnet18": (64, 64, 128, 256, 512),
    "resnet34": (64, 64, 128, 256, 512),
    "resnet50": (64, 256, 512, 1024, 2048),
    "resnet101": (64, 256, 512, 1024, 2048),
}

"""TFLite flatbuffers: export a tinytrain graph (float32, or int8 post-training quantized) and run it in the
TFLite Micro and LiteRT interpreters. Needs the optional `tflite` extra; the runtimes are test extras."""

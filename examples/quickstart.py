"""Quickstart: score the example X-rays with the bundled model (its fastest variant here).

    python examples/quickstart.py
"""

from pathlib import Path

import pneumocnn

xrays = Path(__file__).parent / "xrays"

model = pneumocnn.load()  # the bundled model; pneumocnn.load("my.tflite") for another
print(model)

result = model.predict(xrays / "person1340_virus_2312.jpeg")  # one input, one Prediction
print(result)
print(result.to_dict())

for prediction in model.predict(xrays):  # a folder gives a list, in sorted order
    print(f"{prediction.label:10} {prediction.probability:.3f}  {prediction.source}")

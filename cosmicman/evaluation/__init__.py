"""The paper's evaluation metrics (FID, KID, CLIPScore, HPSv2, semantic accuracy) as plain typed Python."""

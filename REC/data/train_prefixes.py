"""(filled by the IDNet model zoo work)"""
